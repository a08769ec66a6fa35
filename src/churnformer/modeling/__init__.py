"""The network in torch, without Lightning: encoders -> backbone -> heads, the exported scoring wrapper, losses."""
