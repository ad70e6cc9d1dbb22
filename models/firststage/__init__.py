"""The first stage: the numpy scorer, its local training in torch, and federated rounds of its shared part."""
