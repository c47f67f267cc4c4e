"""The network itself: channel groups and surgery, candidate scoring, BatchNorm re-estimation, the plan checkpoints
carry, snapshots, training cycles and cost."""
