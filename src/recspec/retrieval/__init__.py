"""Retrieval drafting (LASER): n-gram pools of earlier outputs, one per user or item group, the groupings
that route requests to them, and their compilation into a device hash table of precomputed draft trees
(`decoding.retrieval_table`)."""
