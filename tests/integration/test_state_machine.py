"""Random sequences of operations keep the ledger, the cache and a plain model in agreement."""

from __future__ import annotations

from functools import partial

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import func, select

from balance_ledger import (
    AccountNotFound,
    AccountStatus,
    AccountSuspended,
    BalanceService,
    IdempotencyConflict,
    InsufficientBalance,
    RefundExceedsCharge,
)
from balance_ledger.db.tables import user_balance_transactions as ledger
from balance_ledger.db.tables import user_balances
from tests.conftest import empty_database

AMOUNTS = st.integers(min_value=1, max_value=5_000)
EXAMPLES = {"sqlite": 40, "postgresql": 15, "mariadb": 15}


class ModelAccount:
    def __init__(self, credit_limit: int) -> None:
        self.credit_limit = credit_limit
        self.balance = self.recharged = self.spent = self.held = 0

    @property
    def status(self) -> AccountStatus:
        suspended = self.balance < -self.credit_limit
        return AccountStatus.SUSPENDED if suspended else AccountStatus.ACTIVE


class LedgerMachine(RuleBasedStateMachine):
    svc: BalanceService
    url: str

    accounts = Bundle("accounts")

    def __init__(self) -> None:
        super().__init__()
        self.model: dict[int, ModelAccount] = {}
        # (user_id, key): the request ("kind:amount") and its answer: a row id, or a
        # refusal (overdraft flag, error class, context), which is replayed ever after.
        self.keys: dict[tuple[int, str], tuple[str, int | tuple[object, ...]]] = {}
        self.charges: list[tuple[int, int, int]] = []  # (user_id, transaction id, amount)
        self.holds: dict[int, tuple[int, int]] = {}  # open hold id -> (user_id, amount)
        self.refunded: dict[int, int] = {}

    @initialize()
    def empty(self) -> None:
        empty_database(self.url)

    @rule(target=accounts, user_id=st.integers(1, 1_000), credit_limit=st.sampled_from([0, 0, 500]))
    def open_account(self, user_id: int, credit_limit: int) -> int:
        if user_id not in self.model:
            self.svc.open_account(user_id, credit_limit=credit_limit)
            self.model[user_id] = ModelAccount(credit_limit)
        return user_id

    @rule(user_id=accounts, amount=AMOUNTS, key=st.none() | st.sampled_from("abc"))
    def recharge(self, user_id: int, amount: int, key: str | None) -> None:
        if self._answered_by_refusal(user_id, key, "recharge", amount, False):
            return
        if self._conflicts(user_id, key, "recharge", amount):
            return
        tx = self.svc.recharge(user_id, amount, idempotency_key=key)
        if self._is_replay(user_id, key, tx.id, "recharge", amount):
            return
        account = self.model[user_id]
        assert tx.balance_before == account.balance
        account.balance += amount
        account.recharged += amount

    @rule(
        user_id=accounts,
        amount=AMOUNTS,
        overdraft=st.booleans(),
        key=st.none() | st.sampled_from("abc"),
    )
    def charge(self, user_id: int, amount: int, overdraft: bool, key: str | None) -> None:
        if self._answered_by_refusal(user_id, key, "charge", amount, overdraft):
            return
        if self._conflicts(user_id, key, "charge", amount):
            return
        account = self.model[user_id]
        replay = key is not None and (user_id, key) in self.keys
        try:
            tx = self.svc.charge_service(
                user_id, amount, "vps", allow_overdraft=overdraft, idempotency_key=key
            )
        except (AccountSuspended, InsufficientBalance) as refused:
            assert not replay
            assert not overdraft
            if isinstance(refused, AccountSuspended):
                assert account.status is AccountStatus.SUSPENDED
            else:
                assert account.balance - amount < -account.credit_limit + account.held
            if key is not None:  # the key's answer from now on
                answer = (overdraft, type(refused), refused.context())
                self.keys[(user_id, key)] = (f"charge:{amount}", answer)
            return
        if self._is_replay(user_id, key, tx.id, "charge", amount):
            return
        assert overdraft or account.status is AccountStatus.ACTIVE
        assert overdraft or account.balance - amount >= -account.credit_limit + account.held
        account.balance -= amount
        account.spent += amount
        self.charges.append((user_id, tx.id, amount))

    @rule(data=st.data())
    def refund(self, data: st.DataObject) -> None:
        if not self.charges:
            return
        user_id, charge_id, charged = data.draw(st.sampled_from(self.charges))
        left = charged - self.refunded.get(charge_id, 0)
        amount = data.draw(st.none() | st.integers(1, charged))
        if left == 0 or (amount is not None and amount > left):
            with pytest.raises(RefundExceedsCharge):
                self.svc.refund(charge_id, amount)
            return
        refund = self.svc.refund(charge_id, amount)
        given = left if amount is None else amount
        assert (refund.amount, refund.related_transaction_id) == (given, charge_id)
        self.refunded[charge_id] = self.refunded.get(charge_id, 0) + given
        self.model[user_id].balance += given
        self.model[user_id].spent -= given

    @rule(
        charges=st.lists(
            st.tuples(st.integers(1, 1_000), AMOUNTS, st.booleans()), min_size=1, max_size=8
        )
    )
    def charge_many(self, charges: list[tuple[int, int, bool]]) -> None:
        """A batch obeys the same rules, item by item in order, as single charges."""
        items = [
            {"user_id": u, "amount": a, "service_type": "vps", "allow_overdraft": o}
            for u, a, o in charges
        ]
        results = self.svc.charge_many(items)
        for (user_id, amount, overdraft), result in zip(charges, results, strict=True):
            account = self.model.get(user_id)
            if account is None:
                assert isinstance(result, AccountNotFound)
                continue
            if not overdraft and account.status is AccountStatus.SUSPENDED:
                assert isinstance(result, AccountSuspended)
                continue
            limit = -account.credit_limit + account.held
            if not overdraft and account.balance - amount < limit:
                assert isinstance(result, InsufficientBalance)
                continue
            assert not isinstance(result, BaseException), result
            assert result.balance_before == account.balance
            account.balance -= amount
            account.spent += amount
            self.charges.append((user_id, result.id, amount))

    @rule(user_id=accounts, amount=AMOUNTS)
    def authorize(self, user_id: int, amount: int) -> None:
        account = self.model[user_id]
        available = account.balance + account.credit_limit - account.held
        try:
            hold = self.svc.authorize(user_id, amount, "vps")
        except AccountSuspended:
            assert account.status is AccountStatus.SUSPENDED
            return
        except InsufficientBalance:
            assert amount > available
            return
        assert amount <= available
        account.held += amount
        self.holds[hold.id] = (user_id, amount)

    @rule(data=st.data(), capture=st.booleans())
    def close_hold(self, data: st.DataObject, capture: bool) -> None:
        if not self.holds:
            return
        hold_id = data.draw(st.sampled_from(sorted(self.holds)))
        user_id, amount = self.holds.pop(hold_id)
        account = self.model[user_id]
        account.held -= amount
        if capture:
            taken = data.draw(st.integers(1, amount))
            charge = self.svc.capture(hold_id, taken)
            account.balance -= taken
            account.spent += taken
            self.charges.append((user_id, charge.id, taken))
        else:
            self.svc.void(hold_id)

    @rule(user_id=accounts, delta=st.integers(-5_000, 5_000).filter(bool))
    def adjust(self, user_id: int, delta: int) -> None:
        adjustment = self.svc.adjust(user_id, delta, reason="model", actor="hypothesis")
        assert adjustment.balance_after - adjustment.balance_before == delta
        self.model[user_id].balance += delta

    def _answered_by_refusal(
        self, user_id: int, key: str | None, kind: str, amount: int, overdraft: bool
    ) -> bool:
        """A key whose first answer was a refusal answers it again, or conflicts."""
        previous = self.keys.get((user_id, key)) if key else None
        if previous is None or not isinstance(previous[1], tuple):
            return False
        refused_overdraft, error_class, context = previous[1]
        same = (previous[0], refused_overdraft) == (f"{kind}:{amount}", overdraft)
        if kind == "charge":
            charge = self.svc.charge_service
            call = partial(charge, user_id, amount, "vps", allow_overdraft=overdraft)
        else:
            call = partial(self.svc.recharge, user_id, amount)
        with pytest.raises(error_class if same else IdempotencyConflict) as answer:
            call(idempotency_key=key)
        if same:
            assert answer.value.replayed
            assert answer.value.context() == context
        return True

    def _conflicts(self, user_id: int, key: str | None, kind: str, amount: int) -> bool:
        """A reused key with another request must raise IdempotencyConflict."""
        previous = self.keys.get((user_id, key)) if key else None
        if previous is None or previous[0] == f"{kind}:{amount}":
            return False
        if kind == "charge":
            with pytest.raises(IdempotencyConflict):
                self.svc.charge_service(user_id, amount, "vps", idempotency_key=key)
        else:
            with pytest.raises(IdempotencyConflict):
                self.svc.recharge(user_id, amount, idempotency_key=key)
        return True

    def _is_replay(self, user_id: int, key: str | None, tx_id: int, kind: str, amount: int) -> bool:
        if key is None:
            return False
        if (user_id, key) in self.keys:
            assert self.keys[(user_id, key)] == (f"{kind}:{amount}", tx_id)
            return True
        self.keys[(user_id, key)] = (f"{kind}:{amount}", tx_id)
        return False

    @rule(
        user_id=accounts,
        column=st.sampled_from(["balance", "total_recharged", "total_spent", "status"]),
        full=st.booleans(),
    )
    def drift_is_found_and_fixed(self, user_id: int, column: str, full: bool) -> None:
        """Corrupt one cache column; verify must report exactly that account, then fix it."""
        wrong: object = "suspended" if column == "status" else -987_654
        if column == "status" and self.model[user_id].status is AccountStatus.SUSPENDED:
            wrong = "active"
        with self.svc.engine.begin() as conn:
            conn.execute(
                user_balances.update()
                .where(user_balances.c.user_id == user_id)
                .values({column: wrong})
            )
        found = self.svc.verify_and_fix_balance(full=full)
        assert [d.user_id for d in found.discrepancies] == [user_id]
        fixed = self.svc.verify_and_fix_balance(fix=True, full=full)
        assert (fixed.fixed, fixed.errors) == (1, [])

    @rule(full=st.booleans())
    def verify_finds_everything_in_sync(self, full: bool) -> None:
        report = self.svc.verify_and_fix_balance(full=full)
        assert report.in_sync
        assert report.checked == len(self.model)

    @rule()
    def anchor_the_chains(self) -> None:
        self.svc.anchor_chains()

    @rule()
    def rebuild_changes_nothing(self) -> None:
        report = self.svc.rebuild_all_balances()
        assert (report.changes, report.errors) == ([], [])

    @invariant()
    def cache_ledger_and_model_agree(self) -> None:
        for user_id, account in self.model.items():
            cached = self.svc.get_balance(user_id)
            assert cached.held == account.held
            totals = self.svc.ledger_totals(user_id)
            expected = (account.balance, account.recharged, account.spent)
            assert (cached.balance, cached.total_recharged, cached.total_spent) == expected
            assert (totals.balance, totals.total_recharged, totals.total_spent) == expected
            assert cached.status is account.status

    @invariant()
    def snapshot_chain_is_unbroken(self) -> None:
        with self.svc.engine.connect() as conn:
            rows = conn.execute(
                select(ledger.c.user_id, ledger.c.balance_before, ledger.c.balance_after).order_by(
                    ledger.c.user_id, ledger.c.id
                )
            ).all()
        last: dict[int, int] = {}
        for row in rows:
            assert row.balance_before == last.get(row.user_id, 0)
            last[row.user_id] = row.balance_after

    @invariant()
    def hash_chain_and_anchors_verify(self) -> None:
        report = self.svc.verify_chain()
        assert report.breaks == []
        with self.svc.engine.connect() as conn:
            assert report.rows == conn.execute(select(func.count()).select_from(ledger)).scalar()


def test_random_operation_sequences_keep_every_invariant(svc, database_url, backend):
    LedgerMachine.svc = svc
    LedgerMachine.url = database_url
    run_state_machine_as_test(
        LedgerMachine,
        settings=settings(
            max_examples=EXAMPLES[backend],
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        ),
    )
