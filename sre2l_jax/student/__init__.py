"""The student recipe relabel and validate share: batch plans, losses, jitted training steps."""
