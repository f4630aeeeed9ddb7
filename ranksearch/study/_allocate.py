"""The ``allocate`` strategy: trials search a few knobs that a sensitivity-based allocation turns into a config.

With 20-40 trials no sampler learns a 20-40-dimensional conditional space. So per-layer sensitivity curves
are measured once (:mod:`ranksearch.sensitivity`; stored in the study, so a resumed study does not measure
them again), and each trial samples only knobs: the budget (a named target times a slack in [0.8, 1], or a
free budget), a preference per method and a depth tilt. The allocator (:mod:`ranksearch.allocation`) turns
them into a config that meets the budget; then the proxy (:mod:`ranksearch.screening`) scores it against
the uniform configs at the same budget (every layer at one method and grid level) and nearby variants (local
moves between layers, jittered knobs), and only the best earns the fine-tune: the search's refinement around
its points, at a fraction of a trial's cost. A new study starts with the one-shot allocation at each target and
the uniform baseline the proxy ranks best there (``uniform_start`` trials; looked for only where ranking them
costs less than one full evaluation).

Why the uniform configs: the allocation adds per-layer curves measured one layer at a time, and at deep
budgets the interactions it ignores make it concentrate the cuts where each alone looked harmless. On
ResNet-20 / Fashion-MNIST at 25% of the MACs the one-shot allocation recalibrated to 0.870 while uniform CP
reached 0.926. Both are measured, not one picked by the proxy: at 20% the proxy ranked the allocation above
uniform CP, which the brief fine-tune put 0.5 points above it (``benchmarks/RESULTS_fashion.md``).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping

import optuna

from ..allocation import Allocator, Knobs, option_costs
from ..config import CompressionConfig
from ..errors import RanksearchError
from ..evaluator import Evaluator
from ..heuristics import uniform_config
from ..objectives import ONE_SHOT_BUDGETS
from ..record import (
    FIXED_CONFIG,
    FRACTIONS,
    ONE_SHOT,
    PROXY_LOSS,
    SCREEN_CHECK_ATTR,
    SCREENED,
    SENSITIVITY_ATTR,
    UNIFORM_START,
    UNIFORM_START_CHECK_ATTR,
)
from ..screening import ProxySettings, Screen
from ..sensitivity import Sensitivity, measure_sensitivity
from ..space import LayerChoices, SearchSpace
from . import _proxy_budget

__all__ = ["KNOB_BUDGET_CAP", "AllocatingProposer"]

Pick = tuple[str, float | None]
KNOB_BUDGET_CAP = 0.7
"""The largest free budget (fraction of dense) a trial may ask for."""
SLACK_RANGE = (0.8, 1.0)
UNIFORM_STARTS = True
"""Whether the sensitivity pass also queues, per target, the uniform config the proxy ranks best. Without them,
on ResNet-20 / Fashion-MNIST TPE never measured uniform CP at 10% or 25% of the MACs, the best baseline there
(``benchmarks/RESULTS_fashion.md``, arm ``no-uniform-start``). The check runs only where it costs less than one
full evaluation (:meth:`AllocatingProposer.check_pays`)."""


class AllocatingProposer:
    """Proposes each trial's config from knobs; measures (or loads) the sensitivity curves on first use.

    Args:
        study: the study (its user attribute ``sensitivity`` holds the curves once measured).
        evaluator: the search's evaluator (model, cache, fixed batches).
        layers: the searched layers' choices.
        targets: ``{cost: fractions}``; the first of ``macs`` / ``params`` named is the allocation's cost
            (MACs without one) and its fractions are the budgets trials aim at. Empty: a free budget.
        screen: candidates scored by the proxy per trial, at most (1: the allocation alone; a new study screens
            what its proxy budget affords, :func:`~._proxy_budget.screen_decision`).
        proxy: the proxy's settings.
        seed: seeds the variants (with the trial number).
        log: receives progress lines of the sensitivity pass.
    """

    def __init__(
        self,
        study: optuna.Study,
        evaluator: Evaluator,
        layers: Mapping[str, LayerChoices],
        targets: Mapping[str, tuple[float, ...]],
        *,
        screen: int,
        proxy: ProxySettings | None = None,
        seed: int = 0,
        log: Callable[[str], None] = print,
    ) -> None:
        self.study, self.evaluator, self.layers = study, evaluator, layers
        self.kind = next((k for k in ("macs", "params") if k in targets), "macs")
        self.targets = tuple(targets.get(self.kind, ()))
        self.screen_size, self.proxy, self.seed, self.log = screen, proxy, seed, log
        self.costs = option_costs(evaluator.model, layers, evaluator.example_input, self.kind)
        self.floor = self._cheapest_any()
        self._allocator: Allocator | None = None
        self._screen: Screen | None = None
        self._light_screen: Screen | None = None
        self._uniform_configs: dict[float, list[CompressionConfig]] = {}
        self.seen: Callable[[CompressionConfig], bool] = lambda config: False
        """Whether a config was measured before (set by the objective, which keeps the measured configs)."""

    # --- preparation ---------------------------------------------------------------------------
    def prepare(self) -> Sensitivity:
        """The sensitivity curves: the study's stored ones, or measured now (and stored), and what the proxies may
        cost (:mod:`._proxy_budget`: decided once, on a new study, and stored)."""
        stored = self.study.user_attrs.get(SENSITIVITY_ATTR)
        sensitivity = Sensitivity.from_dict(stored) if stored is not None else self._measure()
        if self._allocator is None:
            self._allocator = Allocator(self.layers, sensitivity, self.costs)
        if stored is None:  # a new study: its proxy budget and uniform starts, then the curves (a resumed one has all)
            trial = _proxy_budget.trial_seconds(self.evaluator)
            self._decide_screen(trial)
            if UNIFORM_STARTS:
                self._enqueue_uniform_starts(sensitivity, trial)
            self.study.set_user_attr(SENSITIVITY_ATTR, sensitivity.to_dict())
        else:  # studies stored before the decision screen as asked
            self.screen_size = self.study.user_attrs.get(SCREEN_CHECK_ATTR, {}).get("screen", self.screen_size)
        return sensitivity

    def _decide_screen(self, trial: float) -> None:
        """Screen as many candidates per trial as :func:`~._proxy_budget.screen_decision` affords (stored)."""
        if self.screen_size <= 1:
            return
        decision = _proxy_budget.screen_decision(self.screen_size, self._proxy_screen().dense.seconds, trial)
        self.study.set_user_attr(SCREEN_CHECK_ATTR, decision)
        self.screen_size = decision["screen"]
        costs = f"a proxy {decision['proxy_seconds']:.2f} s, a full evaluation >= {trial:.1f} s"
        if self.screen_size < decision["asked"]:
            self.log(
                f"screening: {self.screen_size} of the {decision['asked']} candidates per trial asked for ({costs})"
            )

    def check_pays(self, sensitivity: Sensitivity, budgets: tuple[float, ...], trial: float) -> dict[str, object]:
        """Whether looking for uniform starts at ``budgets`` costs less than one full evaluation (``trial``
        seconds): :func:`~._proxy_budget.uniform_start_check` of one uniform config per method and budget
        (counted without building the uniform configs: a check not run builds nothing). On the digits CNN it
        would cost more than a trial (uniform CP fine-tunes to 0.93 there against the allocation's 0.98, so a
        start would be a trial spent); on ResNet-20 / Fashion-MNIST it is about a third of one."""
        proxies = len(self.methods()) * len(budgets)  # at most: not every method may reach a budget
        return _proxy_budget.uniform_start_check(proxies, sensitivity, trial)

    def _enqueue_uniform_starts(self, sensitivity: Sensitivity, trial: float) -> None:
        """Queue, per one-shot budget, the uniform start (:meth:`best_uniform`) where there is one, if looking
        for them pays (:meth:`check_pays`; the decision is stored in the study)."""
        budgets = self.one_shot_budgets(ONE_SHOT_BUDGETS)
        decision = self.check_pays(sensitivity, budgets, trial)
        self.study.set_user_attr(UNIFORM_START_CHECK_ATTR, decision)
        costs = f"~{decision['check_seconds']:.1f} s of proxies; a full evaluation >= {decision['trial_seconds']:.1f} s"
        if not decision["ran"]:
            self.log(f"uniform starts: not looked for, it would cost more than a trial ({costs})")
            return
        self.log(f"uniform starts: ranking the uniform configs at each target with the proxy ({costs})")
        for budget in budgets:
            start = self.best_uniform(budget)
            if start is None:
                continue
            config, loss, screened = start
            attrs = {FIXED_CONFIG: config.to_dict(), UNIFORM_START: True, SCREENED: screened}
            if loss is not None:
                attrs[PROXY_LOSS] = loss
            self.study.enqueue_trial(self.knob_params(budget), user_attrs=attrs)
            method = next(m for m, _ in config.values() if m != "dense")
            scored = f"proxy loss {loss:.3f}, the best of {screened}" if loss is not None else "the only one"
            self.log(f"  at {budget:g}: uniform {method} ({scored})")

    def _light_screen_new(self) -> Screen:
        """A screen with the sensitivity pass's lighter proxy settings."""
        return Screen(self.evaluator, (self.proxy or ProxySettings()).sensitivity())

    def _measure(self) -> Sensitivity:
        screen = self._light_screen_new()
        methods = ", ".join(self.methods())
        self.log(f"sensitivity: scoring each of {len(self.layers)} layers alone under {methods} ...")
        shown = [0.0]

        def progress(done: int, total: int) -> None:
            if done == total or done / total >= shown[0] + 0.25:
                shown[0] = done / total
                self.log(f"  {done}/{total} proxy evaluations")

        sensitivity = measure_sensitivity(screen, self.layers, progress=progress)
        self.log(f"sensitivity: {sensitivity.probes} proxy evaluations in {sensitivity.seconds:.0f} s")
        return sensitivity

    def _proxy_screen(self) -> Screen:
        if self._screen is None:
            self._screen = Screen(self.evaluator, self.proxy)
        return self._screen

    def _uniform_screen(self) -> Screen:
        """The uniform starts' proxy: the sensitivity pass's settings (a handful of whole configs to rank)."""
        if self._light_screen is None:
            self._light_screen = self._light_screen_new()
        return self._light_screen

    def _cheapest_any(self) -> float:
        """The least model cost any choice reaches (fraction of dense): the bottom of the free budget."""
        own = sum(min(costs.values()) for costs in self.costs.options.values())
        return (self.costs.fixed + own) / self.costs.dense_total

    # --- knobs ---------------------------------------------------------------------------------
    def methods(self) -> tuple[str, ...]:
        """The methods that get a preference knob (every non-dense method of the searched layers)."""
        return tuple(sorted({m for layer in self.layers.values() for m in layer.methods} - {"dense"}))

    def knob_params(self, budget: float) -> dict[str, object]:
        """The neutral knobs at ``budget`` (a target, or a free budget), as trial params: a one-shot allocation."""
        params: dict[str, object] = {f"preference.{m}": 0.0 for m in self.methods()}
        params["depth_tilt"] = 0.0
        if self.targets:  # the target nearest ``budget`` (the categorical's choices are the targets)
            params.update(target=min(self.targets, key=lambda t: abs(t - budget)), slack=1.0)
        else:
            params["budget"] = min(max(budget, self._budget_range()[0]), KNOB_BUDGET_CAP)
        return params

    def one_shot_budgets(self, defaults: tuple[float, ...]) -> tuple[float, ...]:
        """The budgets of the one-shot allocations a new study starts with: its targets, else ``defaults``;
        those no config reaches are left out (a trial there would only repeat the cheapest config)."""
        return tuple(b for b in (self.targets or defaults) if b > self.floor)

    def _budget_range(self) -> tuple[float, float]:
        low = min(KNOB_BUDGET_CAP * 0.9, max(0.01, round(self.floor * 1.02, 4)))
        return low, KNOB_BUDGET_CAP

    def _knobs(self, trial: optuna.Trial) -> Knobs:
        if self.targets:
            budget = trial.suggest_categorical("target", self.targets) * trial.suggest_float("slack", *SLACK_RANGE)
        else:
            budget = trial.suggest_float("budget", *self._budget_range(), log=True)
        preferences = {m: trial.suggest_float(f"preference.{m}", -1.0, 1.0) for m in self.methods()}
        return Knobs(budget, preferences, trial.suggest_float("depth_tilt", -1.0, 1.0))

    # --- proposing -----------------------------------------------------------------------------
    def suggest(self, trial: optuna.Trial) -> CompressionConfig:
        """The config of one trial: an enqueued fixed config, the knobs' allocation (one-shot trials: evaluated
        as allocated, so the search is never below the one-shot allocation at a target), or the best by the
        proxy of the allocation, the uniform configs at its budget and its variants."""
        knobs = self._knobs(trial)
        fixed = trial.user_attrs.get(FIXED_CONFIG)
        if fixed is not None:  # a warm start (its screening, if any, was recorded when it was queued)
            if SCREENED not in trial.user_attrs:
                trial.set_user_attr(SCREENED, 1)
            return CompressionConfig.from_dict(fixed)
        self.prepare()
        allocator = self._allocator
        base = allocator.picks(knobs)
        candidates = [base]
        one_shot = bool(trial.user_attrs.get(ONE_SHOT))  # the allocation itself: the search never ends below it
        if self.screen_size > 1 and not one_shot:
            candidates += self._uniform(base, knobs.budget)[: self.screen_size - 1]
        if self.screen_size > len(candidates) and not one_shot:
            rng = random.Random(self.seed * 1_000_003 + trial.number)
            candidates += self._variants(base, knobs, rng, self.screen_size - len(candidates))
        candidates = candidates if one_shot else self._fresh(candidates, base, knobs, trial.number)
        chosen, loss = candidates[0], None
        if len(candidates) > 1:
            scores = [self._proxy_screen().score(SearchSpace.to_config(self.layers, c)).loss for c in candidates]
            best = min(range(len(candidates)), key=lambda i: (scores[i], i))
            chosen, loss = candidates[best], scores[best]
        trial.set_user_attr(SCREENED, len(candidates))
        if loss is not None and math.isfinite(loss):
            trial.set_user_attr(PROXY_LOSS, loss)
        trial.set_user_attr(FRACTIONS, {n: f for n, (m, f) in chosen.items() if f is not None})
        return SearchSpace.to_config(self.layers, chosen)

    def _fresh(
        self, candidates: list[dict[str, Pick]], base: Mapping[str, Pick], knobs: Knobs, number: int
    ) -> list[dict[str, Pick]]:
        """The candidates not measured before (a config measured before would only copy its measurements); if
        every one was, one unmeasured variant near ``base`` (not screened: it is the only one), else the first.
        With few candidates per trial (2 on the digits CNN) a sampler's knobs often land on measured configs."""
        fresh = [c for c in candidates if not self.seen(SearchSpace.to_config(self.layers, c))]
        if not fresh:
            variants = self._variants(base, knobs, random.Random(self.seed * 1_000_003 + number + 500_009), 8)
            fresh = [c for c in variants if not self.seen(SearchSpace.to_config(self.layers, c))][:1]
        return fresh or candidates[:1]

    def uniform_configs(self, budget: float) -> list[CompressionConfig]:
        """Per method, the uniform baseline at ``budget`` (a fraction of the dense cost): every searched layer
        that takes the method at one kept-rank fraction, the largest that keeps the model within the budget
        (:func:`~ranksearch.heuristics.uniform_config`, to the rank; the others dense). Methods that cannot
        reach the budget are left out."""
        if budget in self._uniform_configs:
            return list(self._uniform_configs[budget])
        found = []
        for method in self.methods():
            names = [n for n, layer in self.layers.items() if method in layer.methods]
            where = {"input_shape": self.evaluator.example_input, "method": method, "layers": names}
            try:
                found.append(uniform_config(self.evaluator.model, cost_fraction=budget, cost=self.kind, **where))
            except RanksearchError:
                continue
        self._uniform_configs[budget] = found
        return list(found)

    def best_uniform(self, budget: float) -> tuple[CompressionConfig, float | None, int] | None:
        """The uniform start at ``budget``: of the uniform baselines there, the one the proxy ranks best, with its
        proxy loss (None where there is only one: nothing to rank) and the number of configs scored; None where
        no method reaches the budget. So the search measures, at one trial per target, the best uniform heuristic
        the proxy can tell apart (on ResNet-20 / Fashion-MNIST, uniform CP; it ranks the methods' uniform configs
        as their brief fine-tunes do, several points apart), whatever its allocations do. It is not weighed
        against the allocation: the light proxy ranks such different configs unreliably (ResNet-20 /
        Fashion-MNIST at 20%: the allocation above uniform CP, 0.5 points under it after the brief fine-tune)."""
        configs = self.uniform_configs(budget)
        if len(configs) <= 1:
            return (configs[0], None, 1) if configs else None
        screen = self._uniform_screen()
        scores = [screen.score(c).loss for c in configs]
        best = min(range(len(configs)), key=lambda i: (scores[i], i))
        return configs[best], scores[best], len(configs)

    def _uniform(self, base: Mapping[str, Pick], budget: float) -> list[dict[str, Pick]]:
        """Per method, the uniform config at ``budget``: every layer that takes the method at the highest grid
        level that keeps the model within the budget (the others as in ``base``); distinct from ``base``."""
        found = []
        for method in self.methods():
            levels = sorted({f for costs in self.costs.options.values() for m, f in costs if m == method})
            best = None
            for level in levels:
                picks = {n: (method, level) if (method, level) in self.costs.options[n] else p for n, p in base.items()}
                if self._allocator.cost(picks) <= budget + 1e-12:
                    best = picks
            if best is not None and best != dict(base) and best not in found:
                found.append(best)
        return found

    def _variants(
        self, base: Mapping[str, Pick], knobs: Knobs, rng: random.Random, count: int
    ) -> list[dict[str, Pick]]:
        """Up to ``count`` distinct configs near ``base`` within its budget: half local moves (one layer a level
        up or to another method, others down to pay for it), half allocations of jittered knobs."""
        allocator = self._allocator
        limit = max(knobs.budget, allocator.cost(base))
        seen = {tuple(sorted(base.items(), key=str))}
        found: list[dict[str, Pick]] = []
        for attempt in range(8 * self.screen_size):
            if len(found) >= count:
                break
            if attempt % 2 == 0:
                candidate = self._local_move(base, limit, rng)
            else:
                jitter = {m: max(-1.0, min(1.0, v + rng.gauss(0, 0.3))) for m, v in knobs.preferences.items()}
                tilt = max(-1.0, min(1.0, knobs.depth_tilt + rng.gauss(0, 0.3)))
                candidate = allocator.picks(Knobs(knobs.budget, jitter, tilt))
            key = tuple(sorted(candidate.items(), key=str)) if candidate else None
            if candidate and key not in seen:
                seen.add(key)
                found.append(candidate)
        return found

    def _local_move(self, base: Mapping[str, Pick], limit: float, rng: random.Random) -> dict[str, Pick] | None:
        """``base`` with one layer moved to another of its measured options, and other layers stepped down one
        option at a time (cheaper, same method) until the config fits ``limit`` again; None if it cannot."""
        options = self._allocator.options
        picks = dict(base)
        name = rng.choice(list(picks))
        choices = [o[0] for o in options[name] if o[0] != picks[name]]
        if not choices:
            return None
        picks[name] = rng.choice(choices)
        others = [n for n in picks if n != name]
        rng.shuffle(others)
        for other in others:
            if self._allocator.cost(picks) <= limit + 1e-12:
                break
            cheaper = [o for o in options[other] if o[1] < self.costs.options[other][picks[other]]]
            if cheaper:
                picks[other] = max(cheaper, key=lambda o: o[1])[0]
        return picks if self._allocator.cost(picks) <= limit + 1e-12 else None
