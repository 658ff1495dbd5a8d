"""The serving side of each arm: its model servers' and GPUs' own metrics joined per arm through the
proxy's info series, and the size of its model (docs/serving.md)."""
