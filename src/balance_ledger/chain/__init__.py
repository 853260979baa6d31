"""The tamper-evident hash chain of the ledger.

- ``rules``: pure: the canonical encoding of a row, its seal (SHA-256 over the previous
  row's hash and its fields), the walk that finds a chain's first break, daily digests.
- ``anchors``: units of work: verify every account's chain, anchor their heads.

The SQL is db/hash_chain.py; the seal of a new row is written by money/post.py.
"""
