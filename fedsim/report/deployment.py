"""Which deployment a DP row's epsilon is about, and which rows form one line against epsilon.

Epsilon depends on the noise multiplier *and* on the deployment it is accounted for: the cohort
whose noise level the run borrows (``privacy.noise_cohort_size``, as in Apple's pfl-research;
:mod:`fedsim.privacy.options`), the sampling scheme, the population and the cohort size. Two
rows with different deployments are two different trade-off curves; joining them into one line
would draw a slope that no single deployment has. So a line holds the rows that agree on
everything but the knobs that move along it (:data:`EPSILON_KNOBS`), and its legend says whose
epsilon it is (:attr:`PrivacyDeployment.note`), as does each row of the table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fedsim.report.sweep import override_key

if TYPE_CHECKING:
    from fedsim.report.rows import Row

# Overrides that move a row along its line: the noise (or the budget it is calibrated to).
EPSILON_KNOBS = ("privacy.noise_multiplier", "privacy.target_epsilon", "privacy.on_target")
# Overrides a line's deployment already says; left out of its label.
DEPLOYMENT_KEYS = (
    "privacy.noise_cohort_size", "privacy.accounting_population", "simulation.sampling",
    "simulation.population", "simulation.clients_per_round",
)


@dataclass(frozen=True)
class PrivacyDeployment:
    """The fleet a DP run's epsilon is accounted for, and the simulated one that stands in."""

    sampling: str | None  # fixed | poisson (None: not in the summary)
    population: int | None  # simulated phones
    clients_per_round: int | None  # simulated cohort
    noise_cohort_size: int | None = None  # the production cohort whose noise the run applies
    accounting_population: int | None = None  # the production population

    @property
    def note(self) -> str:
        """One line for a table cell and a legend entry.

        >>> PrivacyDeployment("fixed", 100, 10).note
        'ε for 10 of 100 clients a round (fixed sampling)'
        >>> print(*PrivacyDeployment("poisson", 100, 10, 1000, 10000).note.split("; "), sep="\\n")
        ε for 1000 of 10000 clients a round (poisson sampling)
        the simulated 10 of 100 get the noise of that cohort
        """
        how = f" ({self.sampling} sampling)" if self.sampling else ""
        simulated = f"{self.clients_per_round} of {self.population} clients a round"
        if self.noise_cohort_size is None:
            return f"ε for {simulated}{how}"
        production = (f"{self.noise_cohort_size} of {self.accounting_population}"
                      if self.accounting_population else f"a cohort of {self.noise_cohort_size}")
        return (f"ε for {production} clients a round{how}; the simulated "
                f"{self.clients_per_round} of {self.population} get the noise of that cohort")


def deployment_of(summary: dict[str, Any]) -> PrivacyDeployment | None:
    """The deployment of a run's ``summary.json``; ``None`` for a run without DP."""
    if summary.get("privacy", "none") == "none":
        return None
    return PrivacyDeployment(
        sampling=summary.get("sampling"),
        population=summary.get("population"),
        clients_per_round=summary.get("clients_per_round"),
        noise_cohort_size=summary.get("noise_cohort_size"),
        accounting_population=summary.get("accounting_population"),
    )


@dataclass(frozen=True)
class EpsilonLine:
    """Rows drawn as one line against epsilon, from the largest epsilon to the smallest."""

    label: str
    rows: tuple[Row, ...]


def has_finite_epsilon(row: Row) -> bool:
    return row.epsilon is not None and math.isfinite(row.epsilon)


def line_key(row: Row) -> tuple:
    """What the rows of one line share: privacy option, deployment, every other override.

    A committed experiment's point selector (``+experiment/<name>@_global_=<point>``) is not
    one of those overrides: a point sets the noise and the deployment, which the row already
    carries, so the points of one deployment form one line.
    """
    rest = tuple(
        o for o in row.setting
        if override_key(o) not in EPSILON_KNOBS + DEPLOYMENT_KEYS
        and not override_key(o).lstrip("+").startswith("experiment/")
    )
    return row.privacy, row.deployment, rest


def epsilon_lines(rows: list[Row], common: tuple[str, ...] = ()) -> list[EpsilonLine]:
    """One line per distinct (privacy option, deployment, other overrides) of the finite-ε rows.

    A line's label is its deployment note, after the privacy option and the overrides that set
    it apart from the other lines (those in ``common``, shared by every job, are left out).
    """
    groups: dict[tuple, list[Row]] = {}
    for row in rows:
        if has_finite_epsilon(row):
            groups.setdefault(line_key(row), []).append(row)
    rests = [set(key[2]) for key in groups]
    shared = set.intersection(*rests) if rests else set()
    privacies = {key[0] for key in groups}
    lines = []
    for (privacy, deployment, rest), members in groups.items():
        parts = [privacy] if len(privacies) > 1 else []
        parts += [o for o in rest if o not in shared and o not in common]
        note = deployment.note if deployment is not None else "deployment unknown"
        label = (" ".join(parts) + ": " if parts else "") + note
        lines.append(EpsilonLine(label, tuple(sorted(members, key=lambda r: -r.epsilon))))
    return lines
