"""Trainer hooks that orchestrate pruning: the shared base, `RLPruneCallback`, `DistributionPruneCallback`, distillation
and the options they take."""
