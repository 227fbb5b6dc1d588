"""Retrieval drafting: n-gram indexes, pools per group, and the groupings that route requests to them."""
