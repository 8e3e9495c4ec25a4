"""Cost budgets (SPEC §8): what a session may still spend, whether it is over, and what tokens cost.

Pure arithmetic. The session core asks `over_budget` and `remaining`; the agent side prices Codex's
token usage with `price_tokens` and a table the operator may override (`SHEPHERD_MODEL_PRICES`, read
by `bot.settings` through `parse_prices`). Claude Code reports its own cost, so it needs no table.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass

# Below a hundredth of a cent two figures are the same figure: float sums must not keep a session
# one rounding error short of its cap.
EPSILON_USD = 1e-9
PRICE_KEYS = ("input", "cached_input", "output")
BAD_PRICES_TEXT = (
    'must be a JSON object of model name to prices in USD per million tokens, like '
    '{{"gpt-5.5": {{"input": 1.25, "cached_input": 0.125, "output": 10}}}}: {problem}'
)
STUCK_REASON_BUDGET_SHARE = (
    "Needs a human: this attempt spent {spent} of its {cap} share of the session's {total} budget "
    "(`max_cost_usd`, shared by the bake-off's attempts). Its work so far is kept. To let it go on, comment "
    "`/agent budget <usd>` with a higher cap for the session, e.g. `/agent budget {suggestion}`."
)
STUCK_REASON_BUDGET = (
    "Needs a human: the session spent {spent} of its {cap} budget (`max_cost_usd`). "
    "The work so far is pushed to the branch. To let it go on, comment `/agent budget <usd>` with a "
    "higher cap, e.g. `/agent budget {suggestion}`."
)
BUDGET_RAISED_REPLY = (
    "The cost cap of this session was raised to {cap} (spent so far: {spent}). Continue the task from "
    "where you stopped."
)


@dataclass(frozen=True)
class ModelPrice:
    """USD per million tokens. Cached input defaults to the input price when a table leaves it out."""

    input: float
    output: float
    cached_input: float | None = None


# Codex does not say which model ran in its event stream, so its adapter's name is the fallback key.
DEFAULT_PRICES: Mapping[str, ModelPrice] = {
    "codex": ModelPrice(input=1.25, cached_input=0.125, output=10.0),
    "gpt-5": ModelPrice(input=1.25, cached_input=0.125, output=10.0),
    "gpt-5.5": ModelPrice(input=1.25, cached_input=0.125, output=10.0),
    "gpt-5-codex": ModelPrice(input=1.25, cached_input=0.125, output=10.0),
    "gpt-5-mini": ModelPrice(input=0.25, cached_input=0.025, output=2.0),
}


def over_budget(cap: float | None, spent: float) -> bool:
    """Has a session with this cap spent all of it? No cap: never."""
    return cap is not None and spent >= cap - EPSILON_USD


def remaining(cap: float | None, spent: float) -> float | None:
    """What is left to spend (never below zero), or None without a cap."""
    if cap is None:
        return None
    return max(0.0, cap - spent)


def price_tokens(
    prices: Mapping[str, ModelPrice], keys: tuple[str, ...], *, input_tokens: int, cached_tokens: int,
    output_tokens: int,
) -> float | None:
    """The cost of a token count under the first of `keys` (model name, then adapter) the table prices."""
    for key in keys:
        price = prices.get(key)
        if price is None:
            continue
        cached = max(0, min(cached_tokens, input_tokens))
        cached_rate = price.cached_input if price.cached_input is not None else price.input
        total = (input_tokens - cached) * price.input + cached * cached_rate + output_tokens * price.output
        return total / 1_000_000
    return None


def parse_prices(text: str) -> dict[str, ModelPrice]:
    """The operator's table, merged over the defaults; raises ValueError saying what is wrong."""
    try:
        data = json.loads(text)
    except ValueError as error:
        raise ValueError(BAD_PRICES_TEXT.format(problem=f"not JSON ({error})")) from None
    if not isinstance(data, dict):
        raise ValueError(BAD_PRICES_TEXT.format(problem="not an object"))
    table = dict(DEFAULT_PRICES)
    for model, entry in data.items():
        if not isinstance(entry, dict) or not {"input", "output"} <= set(entry) or set(entry) - set(PRICE_KEYS):
            raise ValueError(BAD_PRICES_TEXT.format(problem=f"{model!r} needs input and output (and may have cached_input)"))
        values = {key: entry[key] for key in PRICE_KEYS if key in entry}
        for key, value in values.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or not math.isfinite(value):
                raise ValueError(BAD_PRICES_TEXT.format(problem=f"{model}.{key} must be a number of at least 0"))
        table[str(model)] = ModelPrice(**{key: float(value) for key, value in values.items()})
    return table


def format_usd(amount: float) -> str:
    """Dollars the way a person reads them: cents, or a few significant figures below a cent."""
    if amount == 0 or amount >= 0.01:
        return f"${amount:,.2f}"
    return f"${amount:.6f}".rstrip("0")


def spend_line(spent: float, cap: float | None) -> str:
    """"Spend: $0.42 of $2.00" (or without a cap, "Spend: $0.42")."""
    if cap is None:
        return f"Spend: {format_usd(spent)}"
    return f"Spend: {format_usd(spent)} of {format_usd(cap)}"


def suggested_cap(spent: float, cap: float) -> str:
    """A round figure above the old cap, for the stuck reason's one-line way to raise it."""
    return f"{max(cap * 2, spent * 1.5, 0.01):.2f}"


def budget_stuck_reason(spent: float, cap: float, *, share: int = 1) -> str:
    """Why a session (or a bake-off attempt, whose `cap` is its `share` of the session's) stopped at its cap,
    with a raise of the session's cap as a person would write it."""
    if share == 1:
        return STUCK_REASON_BUDGET.format(spent=format_usd(spent), cap=format_usd(cap),
                                          suggestion=suggested_cap(spent, cap))
    return STUCK_REASON_BUDGET_SHARE.format(spent=format_usd(spent), cap=format_usd(cap),
                                            total=format_usd(cap * share), suggestion=suggested_cap(spent * share, cap * share))


def budget_raised_reply(spent: float, cap: float) -> str:
    return BUDGET_RAISED_REPLY.format(spent=format_usd(spent), cap=format_usd(cap))


def parse_usd(text: str) -> float | None:
    """`/agent budget <usd>`'s amount: `5`, `2.50` or `$2.50`; None when it is not a positive amount."""
    cleaned = text.strip().removeprefix("$").strip()
    try:
        amount = float(cleaned)
    except ValueError:
        return None
    if not math.isfinite(amount) or amount <= 0 or amount > 1_000_000:
        return None
    return amount
