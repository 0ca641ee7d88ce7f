"""The batcher alone, over a plain function standing in for a model: who gets which answer, and what a
failing input costs the requests batched with it."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from modelyard.serving._batcher import Batcher, Draining


class Model:
    """Upper-cases its inputs; fails a whole run on any input holding "boom" (as a tokenizer error does)."""

    def __init__(self) -> None:
        self.runs: list[list[str]] = []
        self.gate = threading.Event()

    def __call__(self, texts: list[str], params: Any) -> list[str]:
        self.gate.wait(10)  # held until every request is queued, so that they share one batch
        self.runs.append(list(texts))
        if any("boom" in t for t in texts):
            raise ValueError("token id out of range")
        return [t.upper() for t in texts]


async def _submit_all(model: Model, requests: list[list[str]]) -> list[Any]:
    with ThreadPoolExecutor(1) as pool:
        batcher = Batcher(model, executor=pool, max_batch_size=16, max_wait_ms=200)
        batcher.start()
        tasks = [asyncio.create_task(batcher.submit(texts, None)) for texts in requests]
        await asyncio.sleep(0.05)
        model.gate.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        await batcher.drain()
        return results


def test_each_request_gets_its_own_answers_from_one_batch() -> None:
    model = Model()
    requests = [["a", "b"], ["c"], ["d", "e", "f"]]
    results = asyncio.run(_submit_all(model, requests))
    assert results == [["A", "B"], ["C"], ["D", "E", "F"]]
    assert model.runs == [["a", "b", "c", "d", "e", "f"]]  # one batch


def test_an_input_the_model_fails_on_fails_only_its_own_request() -> None:
    model = Model()
    results = asyncio.run(_submit_all(model, [["a"], ["b", "boom"], ["c", "d"]]))
    assert results[0] == ["A"] and results[2] == ["C", "D"]
    assert isinstance(results[1], ValueError) and "out of range" in str(results[1])
    # The batch failed, then halves of its requests ran until the failure was narrowed to one request.
    assert model.runs == [
        ["a", "b", "boom", "c", "d"],
        ["a"],
        ["b", "boom", "c", "d"],
        ["b", "boom"],
        ["c", "d"],
    ]


def test_one_bad_request_among_many_costs_a_few_runs_not_one_per_request() -> None:
    model = Model()
    sizes: list[int] = []
    requests = [[f"r{i}"] for i in range(16)]
    requests[11] = ["boom"]

    def report(n: int, seconds: float) -> None:
        sizes.append(n)

    async def run() -> list[Any]:
        with ThreadPoolExecutor(1) as pool:
            batcher = Batcher(model, executor=pool, max_batch_size=16, max_wait_ms=200, on_batch=report)
            batcher.start()
            tasks = [asyncio.create_task(batcher.submit(texts, None)) for texts in requests]
            await asyncio.sleep(0.05)
            model.gate.set()
            return list(await asyncio.gather(*tasks, return_exceptions=True))

    results = asyncio.run(run())
    assert [isinstance(r, ValueError) for r in results] == [i == 11 for i in range(16)]
    assert all(results[i] == [f"R{i}"] for i in range(16) if i != 11)
    assert len(model.runs) == 1 + 2 * 4  # the batch, then two halves per level of a 16-way bisection
    assert sizes == [16]  # the narrowing runs are not reported as traffic batches


def test_a_failing_batch_of_one_request_is_not_run_again() -> None:
    model = Model()
    (result,) = asyncio.run(_submit_all(model, [["a", "boom"]]))
    assert isinstance(result, ValueError)
    assert model.runs == [["a", "boom"]]


def test_a_model_that_returns_too_few_outputs_fails_its_requests_clearly() -> None:
    def short(texts: list[str], params: Any) -> list[str]:
        return texts[:-1]

    async def run() -> list[Any]:
        with ThreadPoolExecutor(1) as pool:
            batcher = Batcher(short, executor=pool, max_batch_size=4)
            batcher.start()
            return list(await asyncio.gather(batcher.submit(["a", "b"], None), return_exceptions=True))

    (result,) = asyncio.run(run())
    assert isinstance(result, RuntimeError) and "1 outputs for 2 inputs" in str(result)


def test_bad_settings_are_refused() -> None:
    with ThreadPoolExecutor(1) as pool, pytest.raises(ValueError, match="max_queue"):
        Batcher(lambda t, p: t, executor=pool, max_batch_size=8, max_queue=4)


def test_inputs_of_a_cancelled_request_leave_the_queue_at_once() -> None:
    """A cancelled request's inputs stayed queued (and counted) until the running batch ended: while a long
    batch ran, a client that sent and left kept everyone else at 429 (QueueFull)."""
    model = Model()

    async def run() -> list[str]:
        with ThreadPoolExecutor(1) as pool:
            batcher = Batcher(model, executor=pool, max_batch_size=1, max_queue=4)
            batcher.start()
            running = asyncio.create_task(batcher.submit(["a"], None))
            await asyncio.sleep(0.05)  # "a" runs (held by the gate)
            gone = asyncio.create_task(batcher.submit(["b", "c", "d"], None))
            await asyncio.sleep(0.01)
            assert batcher.depth == 4
            gone.cancel()
            await asyncio.sleep(0.01)
            assert batcher.depth == 1  # only the running input
            late = asyncio.create_task(batcher.submit(["e"], None))  # was QueueFull
            await asyncio.sleep(0.01)
            model.gate.set()
            out = await running + await late
            await batcher.drain()
            return out

    assert asyncio.run(run()) == ["A", "E"]
    assert model.runs == [["a"], ["e"]]


def test_work_left_when_a_drain_times_out_is_answered_draining_not_left_hanging() -> None:
    """Past drain()'s timeout the loop was cancelled and the inputs it had not answered were never answered:
    their requests hung until their own timeout (a 504 long after, not a 503 to retry)."""
    model = Model()

    async def run() -> list[Any]:
        with ThreadPoolExecutor(1) as pool:
            batcher = Batcher(model, executor=pool, max_batch_size=1)
            batcher.start()
            tasks = [asyncio.create_task(batcher.submit([t], None)) for t in ("a", "b")]
            await asyncio.sleep(0.05)  # "a" runs (held by the gate), "b" waits
            await batcher.drain(timeout=0.1)
            done, _ = await asyncio.wait(tasks, timeout=2)
            model.gate.set()
            return [t.exception() if t in done else "hung" for t in tasks]

    results = asyncio.run(run())
    assert all(isinstance(r, Draining) for r in results), results
