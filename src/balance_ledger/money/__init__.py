"""Money movement: every write that changes what an account holds or owes.

- ``requests``: what a caller asks (``Charge``, the one declaration of a charge's fields,
  and ``Movement``, any validated request to append one ledger row).
- ``rules``: pure functions, no SQL: ``decide`` (every rule of a movement), the one funds
  check of charges and holds, an account's figures after a movement.
- ``post``: WHERE A CHARGE HAPPENS — the locked read-check-write of a movement, single and
  batch; the only ledger INSERT.
- ``holds``, ``accounts``, ``history``: the units of work of holds, of accounts written
  without a ledger row, and of reads of the ledger's past.

A unit of work is ``fn(conn, …)``: it runs inside the transaction BalanceService opens
(facade.py) and never commits. One that may change an account's status returns its
result with that change, for the callbacks the facade runs after the commit.
"""
