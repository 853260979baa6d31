"""Reconciliation: the discrepancies, a verify (and fix) run on demand, the runs' audit."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Response

from ..models import Scope
from . import bodies
from .deps import READ_FROM_DOCUMENTED, PageSize, Service, needs, tell_where_read

router = APIRouter(prefix="/v1", tags=["reconciliation"])


@router.get("/discrepancies", dependencies=needs(Scope.ADMIN), responses=READ_FROM_DOCUMENTED)
def discrepancies(svc: Service, response: Response) -> dict[str, Any]:
    """Every account whose cache disagrees with its ledger, largest first (a full scan)."""
    found = svc.get_balance_discrepancies()
    tell_where_read(svc, response)
    return {"discrepancies": [d.to_dict() for d in found]}


@router.post("/reconciliations", status_code=201, dependencies=needs(Scope.ADMIN))
def reconcile(body: bodies.Reconcile, svc: Service) -> dict[str, Any]:
    """Verify every account (or one) against the ledger and, with ``fix``, repair the cache.

    Runs before it answers and is recorded as a sync run (``run_id``). Across all
    accounts it reads the ledger's rows since the last run, or all of them with ``full``.
    """
    report = svc.verify_and_fix_balance(body.user_id, fix=body.fix, full=body.full)
    return {**report.to_dict(), "in_sync": report.in_sync}


@router.get("/sync-runs", dependencies=needs(Scope.READ))
def sync_runs(svc: Service, limit: Annotated[int, PageSize] = 20) -> dict[str, Any]:
    """The most recent verify and rebuild runs, newest first."""
    return {"runs": [run.to_dict() for run in svc.sync_runs(limit)]}


@router.get("/sync-runs/{run_id}/fixes", dependencies=needs(Scope.READ))
def sync_fixes(
    run_id: Annotated[int, Path(description="The run's id.")], svc: Service
) -> dict[str, Any]:
    """Every cache column the run rewrote, with its old and new value."""
    return {"fixes": [fix.to_dict() for fix in svc.sync_fixes(run_id)]}
