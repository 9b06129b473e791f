"""Training methods: one family's training step each, run by the family-blind core
(:mod:`dgm.train.core`); :mod:`dgm.methods.base` states the contract."""
