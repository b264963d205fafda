"""The steady-state loop (`search.mode: steady_state`).

It keeps every worker busy: whenever one is free it asks the scheduler
(`evo.schedule.steady_state`) for the next decision that fits the budget (advance a
paused genome, or breed a new one), records it, and submits its trial; whenever a trial
ends it records the result with the stable checkpoint its worker published in the run's
checkpoint store (`evo.checkpoints`) for a later rung to continue from, and deletes the
ones nothing can continue from any more.

Every decision is stored with the number of results recorded before it, and every
result with its place in the order results came in. A driver killed at any moment
resumes by replaying that history into a fresh scheduler: no finished rung is lost or
trained twice, and the trials that were running are run again from the checkpoints
they started from.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evo.checkpoints import CheckpointStore
from evo.data import TrialData
from evo.executor import Executor, TrialJob, TrialOutcome, failed_outcome
from evo.metrics import TrialStatus
from evo.schedule.budget import Spending, cost_to_top, trial_cost
from evo.schedule.rungs import Ladder
from evo.schedule.steady_state import (
    Breed,
    Decision,
    Event,
    Proposer,
    SteadyStateScheduler,
    replay,
)
from evo.search.loop import SearchLoop
from evo.search.trials import SearchSummary, make_job, objective_values, trial_seed
from evo.space import SearchSpace
from evo.storage import RunStatus, Storage, TrialRecord
from evo.view import SearchView

log = logging.getLogger(__name__)


def trials_folder(name: str) -> Path:
    """Where a run keeps the checkpoints of its paused trials unless told otherwise (`evo
    run --checkpoints`): its folder under results/, here."""
    return Path("results") / name / "trials"


@dataclass
class _Flight:
    """A decision whose trial is running (its row: `SearchLoop.trial_ids`)."""

    decision: int
    rung: int
    continued_from: int | None
    genes: dict[str, Any]
    started: float  # when its current attempt started


class SteadyStateSearch(SearchLoop):
    """A steady-state search over the space's rungs, recorded in `storage` under `name`."""

    def __init__(
        self,
        space: SearchSpace,
        name: str,
        storage: Storage,
        executor: Executor,
        data: TrialData,
        vocab_size: int,
        view: SearchView | None = None,
        *,
        proposer: Proposer = "evolution",
        checkpoints: CheckpointStore | None = None,
    ) -> None:
        super().__init__(space, name, storage, executor, data, vocab_size, view)
        self.budgets = space.rung_budgets()
        self.ladder = Ladder(self.budgets, space.search.eta, slack=space.search.population)
        self.scheduler = SteadyStateScheduler(space, vocab_size, self.ladder, proposer)
        self.checkpoints = checkpoints or CheckpointStore(trials_folder(name))
        self.spending = Spending(space.search.budget.limits())
        self.flights: dict[int, _Flight] = {}  # genome id → its trial in flight
        self.kept: dict[int, str] = {}  # trial id → the checkpoint it left
        self.next_decision = 0
        self.last_recorded = 0

    def run(self) -> SearchSummary:
        self.storage.interrupt_active(self.name)
        self.storage.set_run_status(self.name, RunStatus.RUNNING)
        pending = self._restore()
        session = self.storage.start_session(self.name, self.executor.capacity)
        try:
            self._loop(pending)
        finally:
            self.executor.cancel()
            self.storage.end_session(session)
        for trial_id in list(self.kept):  # nothing will continue a paused genome now
            self._delete_checkpoint(trial_id)
        self.storage.set_run_status(self.name, RunStatus.FINISHED)
        return SearchSummary(self.name, self.trials_run, self.best(), self.detail())

    # The loop

    def _loop(self, pending: list[TrialRecord]) -> None:
        while True:
            while self.executor.in_flight < self.executor.capacity:
                if pending:
                    job = self._rerun(pending.pop(0))
                    if job is None:
                        continue
                else:
                    job = self._decide()
                    if job is None:
                        break
                self.executor.submit(job, self)
            if not self.executor.in_flight:
                return
            self.executor.lend_idle_workers()
            self.executor.wait(self)
            self.view.progress("budget", self.spending.fraction(), 1.0)

    def _decide(self) -> TrialJob | None:
        """Make, record and return the next decision's job; None when none fits now."""
        while True:
            number = self.next_decision
            decision = self.scheduler.decide(number, self._fits)
            if decision is None:
                return None
            self.next_decision += 1
            if isinstance(decision, Breed):
                genome_id = self.storage.genome_id(self.name, decision.genes)
                self.scheduler.bred_genome(genome_id, decision.genes)
                rung, continued_from, genes = 0, None, decision.genes
            else:
                genome_id, rung, continued_from = (
                    decision.genome_id,
                    decision.rung,
                    decision.trial_id,
                )
                self.scheduler.advanced(genome_id, rung)
                genes = self.scheduler.genes[genome_id]
            self.spending.commit(number, trial_cost(self.space, genes, rung))
            trial_id = self.storage.add_trial(
                self.name,
                genome_id,
                rung=rung,
                decision=number,
                seen=self.last_recorded,
                budget=self.budgets[rung],
                seed=trial_seed(self.space.search.seed, genes),
                continued_from=continued_from,
            )
            job = self._job(trial_id, number, genome_id, genes, rung, continued_from)
            if job is not None:
                return job

    def _rerun(self, trial: TrialRecord) -> TrialJob | None:
        """The job of a decision whose trial was interrupted, as a new attempt."""
        genes, decision = self.scheduler.genes[trial.genome_id], trial.decision
        assert decision is not None  # every trial of a steady-state search has one
        self.spending.commit(decision, trial_cost(self.space, genes, trial.rung), counted=True)
        trial_id = self.storage.add_trial(
            self.name,
            trial.genome_id,
            rung=trial.rung,
            decision=trial.decision,
            seen=trial.seen,
            attempt=trial.attempt + 1,
            budget=trial.budget,
            seed=trial.seed,
            continued_from=trial.continued_from,
        )
        return self._job(
            trial_id, decision, trial.genome_id, genes, trial.rung, trial.continued_from
        )

    def _job(
        self,
        trial_id: int,
        decision: int,
        genome_id: int,
        genes: dict[str, Any],
        rung: int,
        continued_from: int | None,
    ) -> TrialJob | None:
        """The trial's job, with the checkpoint it continues; when that checkpoint cannot be
        read, the trial is recorded as failed and None is returned."""
        self.flights[genome_id] = _Flight(decision, rung, continued_from, genes, time.time())
        self.trial_ids[genome_id] = trial_id
        resume = None if continued_from is None else self.kept.get(continued_from)
        job = make_job(
            self.space, self.vocab_size, genome_id, genes, rung, resume, self.checkpoints
        )
        if continued_from is not None and (resume is None or not self.checkpoints.exists(resume)):
            reason = "it was deleted" if resume is None else f"it is not in {self.checkpoints.url}"
            error = f"cannot read the checkpoint of trial {continued_from}: {reason}"
            self.finished(job, failed_outcome(TrialStatus.FAILED, error, time.time()))
            return None
        return job

    def _fits(self, decision: Decision) -> bool:
        """Whether the budget left can carry the decision's genome to the top rung: a trial
        that cannot lead to a top-rung result would spend the budget on nothing."""
        if isinstance(decision, Breed):
            cost = cost_to_top(self.space, decision.genes, 0)
        else:
            genes = self.scheduler.genes[decision.genome_id]
            cost = cost_to_top(self.space, genes, decision.rung)
        now = time.time()
        running = sum(now - flight.started for flight in self.flights.values())
        return self.spending.allows(cost, running)

    # What the executor reports

    def _attempt_row(self, job: TrialJob, attempt: int) -> int:
        self.flights[job.genome_id].started = time.time()
        return self.trial_ids[job.genome_id]  # added when the decision was made

    def _genes(self, job: TrialJob) -> dict[str, Any]:
        return self.flights[job.genome_id].genes

    def retrying(self, job: TrialJob, attempt: int, error: str) -> None:
        # The lost attempt's time was spent; its steps are not known.
        self.spending.settle(0, 0, time.time() - self.flights[job.genome_id].started)
        super().retrying(job, attempt, error)

    def finished(self, job: TrialJob, outcome: TrialOutcome) -> None:
        flight = self.flights.pop(job.genome_id)
        trial_id = self.trial_ids.pop(job.genome_id)
        result = outcome.result
        values = objective_values(self.space, outcome.status, result)
        dropped = self.scheduler.result(job.genome_id, flight.rung, trial_id, values)
        name = outcome.checkpoint  # published in the store by the worker
        if name is not None and trial_id in dropped:
            self.checkpoints.delete(name)
            name = None
        if flight.continued_from is not None:
            dropped.append(flight.continued_from)  # the genome has moved on from it
        # The result, the checkpoints it frees and the forecast refitted with it are
        # recorded at once: a resumed search knows which genomes still wait from what is
        # stored, and a reader never sees a forecast of other results than those stored.
        forecast = self.scheduler.forecast
        self.last_recorded = self.storage.finish_trial(
            trial_id,
            outcome,
            checkpoint=name,
            forget=[freed for freed in dropped if freed in self.kept],
            forecast=forecast.record() if forecast is not None and values is not None else None,
        )
        if name is not None:
            self.kept[trial_id] = name
        for freed in dropped:
            kept = self.kept.pop(freed, None)
            if kept is not None:
                self.checkpoints.delete(kept)
        # What storage counts too, so that a resumed search spends the same.
        metrics = result.metrics
        self.spending.settle(metrics["steps"], metrics["tokens"], metrics["wall_seconds"])
        self.spending.release(flight.decision)
        self.trials_run += 1
        self.view.trial_finished(flight.genes, flight.rung, outcome)

    def _delete_checkpoint(self, trial_id: int) -> None:
        name = self.kept.pop(trial_id, None)
        if name is not None:
            self.storage.forget_checkpoint(trial_id)
            self.checkpoints.delete(name)

    # Resuming

    def _restore(self) -> list[TrialRecord]:
        """Rebuild the scheduler's state from the stored history; returns the decisions
        whose trials were interrupted, to run again."""
        trials = self.storage.trials(self.name)
        events, pending = history(self.space, trials, self.storage.genomes(self.name))
        self.kept = {t.id: t.checkpoint for t in trials if t.checkpoint is not None}
        replay(self.scheduler, events, set(self.kept))
        # Only a resume told to go on without them gets here with checkpoints missing
        # (`missing_checkpoints`): their genomes are dropped, and an interrupted trial that
        # continued one fails when it is run again.
        missing = len(missing_checkpoints(trials, self.checkpoints))
        for rung, waiting in enumerate(self.scheduler.waiting):
            for genome, trial_id in list(waiting.items()):
                if not self.checkpoints.exists(self.kept[trial_id]):
                    self.scheduler.forget(genome, rung)
        if missing:
            log.warning(
                "evo: going on without %d paused trials' checkpoints missing from %s; "
                "those genomes cannot advance",
                missing,
                self.checkpoints.url,
            )
        # Checkpoints nothing can continue any more: a genome that has a result at the
        # rung above (kept by an older evo), or one no longer waiting.
        waiting = {trial_id for rung in self.scheduler.waiting for trial_id in rung.values()}
        pending_sources = {t.continued_from for t in pending}
        for trial_id in sorted(set(self.kept) - waiting - pending_sources):
            self._delete_checkpoint(trial_id)
        self.checkpoints.keep_only(set(self.kept.values()))
        self.next_decision = 1 + max((t.decision or 0 for t in trials), default=-1)
        self.last_recorded = max((t.recorded or 0 for t in trials), default=0)
        self.spending = Spending.resumed(
            self.space.search.budget.limits(), self.storage.spent(self.name)
        )
        return pending

    def detail(self) -> str:
        trials = self.storage.trials(self.name)
        per_rung = Counter(t.rung for t in trials if t.status.is_result)
        rungs = ", ".join(f"{per_rung[r]} at rung {r + 1}" for r in range(len(self.budgets)))
        text = f"{len({t.decision for t in trials})} trials ({rungs})"
        forecast = self.scheduler.forecast
        if forecast is None or not forecast.points:
            return text
        from evo.validate import search_ranking  # the one ranking (reads pandas' summary)

        pick = search_ranking(self.storage, self.name, self.space)[0]
        if pick.predicted is None:
            return text
        return (
            f"{text}; pick for the target: genome {pick.genome_id}, "
            f"{forecast.objective.metric} {pick.predicted.mean:.4g} predicted"
        )


def missing_checkpoints(trials: list[TrialRecord], checkpoints: CheckpointStore) -> list[str]:
    """The checkpoints a resumed search of these trials still needs that `checkpoints`
    lacks: those of paused genomes, and those that interrupted trials continue. A genome
    with a result at a higher rung no longer needs the one it left below (an older evo
    kept it)."""
    reached: dict[int, int] = {}  # genome id → the highest rung it has a result at
    for trial in trials:
        if trial.status.is_result:
            reached[trial.genome_id] = max(trial.rung, reached.get(trial.genome_id, 0))
    needed = sorted(
        t.checkpoint
        for t in trials
        if t.checkpoint is not None and reached.get(t.genome_id, 0) <= t.rung
    )
    return [name for name in needed if not checkpoints.exists(name)]


def history(
    space: SearchSpace, trials: list[TrialRecord], genomes: dict[int, dict[str, Any]]
) -> tuple[list[Event], list[TrialRecord]]:
    """A run's decisions and results as events in the order they happened (a decision
    after the results recorded before it was made), and the latest trial of each
    decision that has no result yet."""
    by_decision: dict[int, list[TrialRecord]] = {}
    for trial in trials:
        by_decision.setdefault(trial.decision or 0, []).append(trial)
    results = sorted((t for t in trials if t.status.is_result), key=lambda t: t.recorded or 0)
    events: list[Event] = []
    done = 0
    for number in sorted(by_decision):
        first = by_decision[number][0]
        while done < len(results) and (results[done].recorded or 0) <= (first.seen or 0):
            events.append(_result_event(space, results[done]))
            done += 1
        if first.rung == 0:
            genes = genomes[first.genome_id]
            events.append(Event("bred", first.genome_id, 0, first.id, genes=genes))
        else:
            events.append(Event("advanced", first.genome_id, first.rung, first.id))
    events += [_result_event(space, trial) for trial in results[done:]]
    pending = [
        rows[-1]
        for _, rows in sorted(by_decision.items())
        if not any(row.status.is_result for row in rows)
    ]
    return events, pending


def _result_event(space: SearchSpace, trial: TrialRecord) -> Event:
    values = objective_values(space, trial.status, trial)
    return Event("result", trial.genome_id, trial.rung, trial.id, values=values)
