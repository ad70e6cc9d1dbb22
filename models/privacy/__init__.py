"""Privacy of the learning core: attribute-inference attackers and the leakage-aware objective."""
