"""N8. Circuits: two layers of gates compute anything, but parity wants depth.

Source: Nielsen, *Neural Networks and Deep Learning*, ch. 5, introduction (two layers of NAND
gates compute any function; shallow circuits for parity need exponentially many gates, after
Furst-Saxe-Sipser, Ajtai, Yao and Hastad; deep ones are small); "why not one layer" is the
lecture notes' addition.

Claims, checked exactly and exhaustively for small n (literals x_i and not-x_i are free inputs):
every Boolean function of n <= 4 inputs is a NAND of NANDs of literals; no single AND, OR, NAND or
NOR gate computes parity (XOR for n = 2); every gate usable in a depth-2 circuit for parity_n is a
full minterm (or its complement), so a depth-2 circuit needs 2^(n-1) first-layer gates (n <= 6);
a balanced tree of XORs computes parity_n with 4(n-1) two-input NAND gates (n <= 8); a single
perceptron cannot compute XOR, and two layers of them can.

Measured: truth tables as bit masks (bit k = the function's value on the input whose bits are k),
so a gate applied to masks evaluates it on all 2^n inputs at once: all 65,812 functions of 1..4
inputs; all 4 (4^n - 1) single gates over literal subsets; linear programs (scipy.optimize.
linprog, HiGHS) for the perceptrons.

Pass criteria: exact (counts and truth tables are integers; an LP is infeasible or not). The
lower bound rests on the minterm argument; a brute-force search over every depth-2 circuit with
fewer than 2^(n-1) first-layer gates confirms it independently for n = 2 and 3.

Smoke budget: nothing changes; the whole file takes a few seconds.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linprog

from nnsanity.repro.claims import exact_claim

SOURCE = "Nielsen ch. 5, introduction ('deep circuits')"

# -- sizes ------------------------------------------------------------------------------------
ALL_FUNCTIONS_N = (1, 2, 3, 4)  # 2^(2^n) functions each: 4 + 16 + 256 + 65,536
PARITY_N = (2, 3, 4, 5, 6)  # 4^6 literal subsets at n = 6; truth tables fit a uint64
BRUTE_FORCE_N = (2, 3)  # every smaller depth-2 circuit: 18,472 first layers x 4 tops at n = 3
XOR_TREE_N = tuple(range(2, 9))  # balanced XOR trees up to 8 inputs (256-bit truth tables)
TWO_LAYER_N = tuple(range(2, 9))
LP_SLACK = 1e-9  # HiGHS's feasibility tolerance is 1e-7 on a margin of 1; a margin this small is 0


# -- truth tables -----------------------------------------------------------------------------
def full(n: int) -> int:
    return (1 << 2**n) - 1


def variable(n: int, i: int) -> int:
    """The truth table of x_i: bit k is set when bit i of the input k is."""
    return sum(1 << k for k in range(2**n) if k >> i & 1)


def literals(n: int) -> list[int]:
    """x_1..x_n, then not-x_1..not-x_n."""
    xs = [variable(n, i) for i in range(n)]
    return xs + [full(n) ^ x for x in xs]


def parity(n: int) -> int:
    return sum(1 << k for k in range(2**n) if k.bit_count() % 2)


def inputs(n: int) -> np.ndarray:
    """(2^n, n) 0/1 matrix: row k is the input k, in the truth tables' bit order."""
    k = np.arange(2**n)
    return ((k[:, None] >> np.arange(n)) & 1).astype(float)


def single_gates(n: int) -> dict[str, np.ndarray]:
    """Truth tables of AND, OR, NAND, NOR over every nonempty subset of the 2n literals."""
    lits = np.array(literals(n), dtype=np.uint64)
    ones = np.uint64(full(n))
    subsets = np.arange(1, 4**n, dtype=np.uint64)[:, None]
    chosen = ((subsets >> np.arange(2 * n, dtype=np.uint64)) & np.uint64(1)).astype(bool)
    conj = np.bitwise_and.reduce(np.where(chosen, lits, ones), axis=1)
    disj = np.bitwise_or.reduce(np.where(chosen, lits, np.uint64(0)), axis=1)
    return {"AND": conj, "OR": disj, "NAND": ~conj & ones, "NOR": ~disj & ones}


def conjunction(n: int, masks: Iterable[int]) -> int:
    out = full(n)
    for m in masks:
        out &= m
    return out


def disjunction(masks: Iterable[int]) -> int:
    out = 0
    for m in masks:
        out |= m
    return out


def nand(n: int, masks: Iterable[int]) -> int:
    """A many-input NAND gate applied to truth tables."""
    return full(n) ^ conjunction(n, masks)


# -- the claims -------------------------------------------------------------------------------
def nand_of_nands(n: int) -> tuple[int, int]:
    """The DNF circuit of every function of n inputs, all at once; (how many correct, total)."""
    ones = np.uint64(full(n))
    lits = literals(n)
    # First layer: for each input k, the NAND of the n literals true at k: 0 at k, 1 elsewhere.
    first = np.array(
        [nand(n, [lits[i] if k >> i & 1 else lits[n + i] for i in range(n)]) for k in range(2**n)],
        dtype=np.uint64,
    )
    contradiction = np.uint64(nand(n, [lits[0], lits[n]]))  # NAND(x1, not-x1) = 1: feeds f = 0
    functions = np.arange(2 ** (2**n), dtype=np.uint64)  # every truth table of n inputs
    uses = ((functions[:, None] >> np.arange(2**n, dtype=np.uint64)) & np.uint64(1)).astype(bool)
    # Second layer: a NAND of the first-layer gates at f's true inputs (an unused input is a 1).
    conj = np.bitwise_and.reduce(np.where(uses, first, ones), axis=1)
    conj &= np.where(functions == 0, contradiction, ones)
    output = ~conj & ones
    return int(np.count_nonzero(output == functions)), functions.size


def test_two_layers_of_nand_gates_compute_every_function_of_up_to_four_inputs(claim):
    counts = {n: nand_of_nands(n) for n in ALL_FUNCTIONS_N}
    correct = sum(c for c, _ in counts.values())
    total = sum(t for _, t in counts.values())
    claim(
        exact_claim(
            correct == total,
            [correct],
            id="N8.nand-nand-all-functions",
            source=SOURCE,
            statement="every Boolean function of n <= 4 inputs is computed by two layers of NAND "
            "gates over the literals",
            published=float(total),
            statistic=f"functions of n in {list(ALL_FUNCTIONS_N)} inputs whose NAND-of-NANDs "
            "circuit (one first-layer gate per true input) has the right truth table",
            interval=(total, total),
            details={
                f"n={n}": {"correct": c, "functions": t, "max_gates": 2**n + 1}
                for n, (c, t) in counts.items()
            },
        )
    )


def test_no_single_gate_computes_xor_or_parity(claim):
    found, searched, sanity = {}, 0, True
    for n in PARITY_N:
        gates = single_gates(n)
        searched += 4 * (4**n - 1)
        found[n] = sum(int(np.count_nonzero(g == np.uint64(parity(n)))) for g in gates.values())
        # the search itself works: AND(x1, x2) and NOR(x1, x2) are single gates
        x1, x2 = variable(n, 0), variable(n, 1)
        sanity &= bool(np.any(gates["AND"] == np.uint64(x1 & x2)))
        sanity &= bool(np.any(gates["NOR"] == np.uint64(full(n) ^ (x1 | x2))))
    claim(
        exact_claim(
            sanity and not any(found.values()),
            list(found.values()),
            id="N8.no-single-gate-parity",
            source=SOURCE + " and the lecture notes ('why not one layer?')",
            statement="no single AND, OR, NAND or NOR gate of literals computes XOR or parity_n",
            published=0.0,
            statistic=f"single gates whose truth table is parity_n, one value per n in "
            f"{list(PARITY_N)} ({searched} gates searched)",
            interval=(0.0, 0.0),
            details={"search_finds_AND_and_NOR": sanity},
        )
    )


def _depth2_bound(n: int) -> tuple[int, dict[str, int]]:
    """Fewest first-layer gates of any depth-2 circuit for parity_n, and the evidence.

    Under an OR-like top gate (OR; NAND, the OR of the complements) every first-layer gate (or
    its complement) may be 1 only on rows where parity is 1: an implicant; under an AND-like top
    (AND; NOR) it may be 0 only where parity is 0: an implicate. The single gates are closed
    under complement, so they hold every candidate. If the largest covers one row, the rows
    of parity's 2^(n-1) ones (or zeros) need one gate each.
    """
    ones, target = full(n), parity(n)
    gates = {int(g) for table in single_gates(n).values() for g in table}
    under_or = [g for g in gates if g and not g & ~target]  # implicants of parity
    under_and = [g for g in gates if g != ones and not ~g & target & ones]  # implicates
    cover = max(
        max(g.bit_count() for g in under_or), max((ones ^ g).bit_count() for g in under_and)
    )
    dnf_exists = disjunction(under_or) == target  # the minterms do cover parity: the bound is met
    terms = [g for g in single_gates(n)["AND"].tolist() if g]
    full_minterms = all(g.bit_count() == 1 for g in terms if not g & ~target)
    evidence = {
        "implicants": len(under_or),
        "implicates": len(under_and),
        "largest_cover": cover,
        "every_implicant_is_a_full_minterm": full_minterms,
    }
    needed = math.ceil(target.bit_count() / cover)
    return (needed if dnf_exists else -1), evidence


def _brute_force_smallest(n: int) -> int:
    """Try every depth-2 circuit with fewer than 2^(n-1) first-layer gates; return the size at
    which one first computes parity (2^(n-1) if none smaller does)."""
    ones, target = full(n), parity(n)
    gates = sorted({int(g) for table in single_gates(n).values() for g in table})
    for size in range(1, 2 ** (n - 1)):
        for chosen in itertools.combinations(gates, size):
            conj, disj = conjunction(n, chosen), disjunction(chosen)
            # the four top gates: OR, NOR, AND, NAND of the chosen first layer
            if target in (disj, ones ^ disj, conj, ones ^ conj):
                return size
    return 2 ** (n - 1)


def test_a_depth_two_circuit_for_parity_needs_2_to_the_n_minus_1_gates(claim):
    ratios, evidence = [], {}
    for n in PARITY_N:
        needed, evidence[f"n={n}"] = _depth2_bound(n)
        ratios.append(needed / 2 ** (n - 1))
    brute = {f"n={n}": _brute_force_smallest(n) for n in BRUTE_FORCE_N}
    holds = (
        all(r == 1 for r in ratios)
        and all(e["every_implicant_is_a_full_minterm"] for e in evidence.values())
        and all(brute[f"n={n}"] == 2 ** (n - 1) for n in BRUTE_FORCE_N)
    )
    claim(
        exact_claim(
            holds,
            ratios,
            id="N8.parity-depth2-size",
            source=SOURCE,
            statement="every implicant of parity_n is a full minterm, so a depth-2 circuit for "
            "parity_n needs 2^(n-1) first-layer gates",
            published=1.0,
            statistic=f"fewest first-layer gates / 2^(n-1), one value per n in {list(PARITY_N)}; "
            f"brute force over all smaller depth-2 circuits for n in {list(BRUTE_FORCE_N)}",
            interval=(1.0, 1.0),
            details={**evidence, "brute_force_smallest": brute},
        )
    )


@dataclass
class NandCircuit:
    """A netlist of two-input NAND gates: wires 0..n-1 are the inputs, then one per gate."""

    n_inputs: int
    gates: list[tuple[int, int]] = field(default_factory=list)

    def nand(self, i: int, j: int) -> int:
        self.gates.append((i, j))
        return self.n_inputs + len(self.gates) - 1

    def xor(self, i: int, j: int) -> int:
        """XOR from four NANDs: c = NAND(i, j); NAND(NAND(i, c), NAND(j, c))."""
        c = self.nand(i, j)
        return self.nand(self.nand(i, c), self.nand(j, c))

    def evaluate(self) -> tuple[list[int], list[int]]:
        """Every wire's truth table and depth."""
        n = self.n_inputs
        tables, depth = [variable(n, i) for i in range(n)], [0] * n
        for i, j in self.gates:
            tables.append(full(n) ^ (tables[i] & tables[j]))
            depth.append(1 + max(depth[i], depth[j]))
        return tables, depth


def xor_tree(n: int) -> tuple[NandCircuit, int]:
    """Parity of n inputs as a balanced tree: XOR of pairs, then of pairs of pairs, ..."""
    circuit, level = NandCircuit(n), list(range(n))
    while len(level) > 1:
        pairs = [circuit.xor(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        level = pairs + level[len(pairs) * 2 :]
    return circuit, level[0]


def test_a_balanced_xor_tree_computes_parity_with_4_n_minus_1_nand_gates(claim):
    ratios, table = [], {}
    correct = True
    for n in XOR_TREE_N:
        circuit, out = xor_tree(n)
        tables, depth = circuit.evaluate()
        correct &= tables[out] == parity(n) and depth[out] == 3 * math.ceil(math.log2(n))
        ratios.append(len(circuit.gates) / (4 * (n - 1)))
        table[f"n={n}"] = {
            "gates": len(circuit.gates),
            "depth": depth[out],
            "depth2_gates": 2 ** (n - 1) + 1,
        }
    claim(
        exact_claim(
            correct and all(r == 1 for r in ratios),
            ratios,
            id="N8.xor-tree-gates",
            source=SOURCE,
            statement="a balanced tree of XORs computes parity_n with 4(n-1) two-input NAND gates",
            published=1.0,
            statistic=f"NAND gates / 4(n-1) of a tree whose truth table is parity_n and depth "
            f"3 ceil(log2 n), one value per n in {list(XOR_TREE_N)}",
            interval=(1.0, 1.0),
            details=table,
        )
    )


def _separable(x: np.ndarray, labels: np.ndarray) -> tuple[int, float, np.ndarray | None]:
    """One perceptron: (status of the LP 'y (w.x + b) >= 1 for all', best margin, (w, b)).

    The best margin is max t subject to y (w.x + b) >= t with |w|, |b| <= 1: 0 when no
    hyperplane separates the labels, positive when one does.
    """
    y = np.where(labels, 1.0, -1.0)
    rows = -y[:, None] * np.hstack([x, np.ones((len(x), 1))])
    free = [(None, None)] * (x.shape[1] + 1)
    hard = linprog(
        np.zeros(x.shape[1] + 1), A_ub=rows, b_ub=-np.ones(len(x)), bounds=free, method="highs"
    )
    best = linprog(
        np.r_[np.zeros(x.shape[1] + 1), -1.0],
        A_ub=np.hstack([rows, np.ones((len(x), 1))]),
        b_ub=np.zeros(len(x)),
        bounds=[(-1, 1)] * (x.shape[1] + 1) + [(None, 1)],
        method="highs",
    )
    return hard.status, -best.fun + 0.0, (hard.x if hard.status == 0 else None)  # no -0.0


def _labels(n: int, table: int) -> np.ndarray:
    return np.array([bool(table >> k & 1) for k in range(2**n)])


def test_a_single_perceptron_cannot_compute_xor_or_parity(claim):
    margins, statuses, controls = {}, {}, {}
    for n in PARITY_N:
        x = inputs(n)
        statuses[n], margins[n], _ = _separable(x, _labels(n, parity(n)))
        # the LP can succeed: AND and OR of the n inputs are separable
        xs = [variable(n, i) for i in range(n)]
        for name, table in (("AND", conjunction(n, xs)), ("OR", disjunction(xs))):
            status, _, wb = _separable(x, _labels(n, table))
            controls[f"{name}_{n}"] = status == 0 and bool(
                np.all((x @ wb[:-1] + wb[-1] > 0) == _labels(n, table))
            )
    infeasible = all(s == 2 for s in statuses.values())
    holds = infeasible and all(m <= LP_SLACK for m in margins.values()) and all(controls.values())
    claim(
        exact_claim(
            holds,
            list(margins.values()),
            id="N8.perceptron-xor",
            source="the lecture notes ('why not one layer?'), after " + SOURCE,
            statement="no single perceptron computes XOR (or parity_n): the LP for a separating "
            "(w, b) with margin >= 1 is infeasible",
            published=0.0,
            statistic=f"best margin of a perceptron with |w|, |b| <= 1 (LP), one value per n in "
            f"{list(PARITY_N)}; the margin >= 1 LP's HiGHS status must be 2 (infeasible)",
            interval=(0.0, LP_SLACK),
            details={
                "lp_status": {str(n): s for n, s in statuses.items()},
                "AND_and_OR_separable": controls,
            },
        )
    )


def _step(v: np.ndarray) -> np.ndarray:
    return (v > 0).astype(float)


def test_two_layers_of_perceptrons_compute_xor_and_parity(claim):
    # XOR by hand: OR and NAND in the hidden layer, AND of the two at the output.
    x = inputs(2)
    hidden = _step(x @ np.array([[1.0, -1.0], [1.0, -1.0]]) + np.array([-0.5, 1.5]))
    xor_by_hand = _step(hidden @ np.array([1.0, 1.0]) - 1.5)
    accuracy = {"xor_by_hand": float(np.mean(xor_by_hand == _labels(2, parity(2))))}
    # Parity_n: hidden units count the ones ([sum x >= k], k = 1..n); an LP finds the output.
    for n in TWO_LAYER_N:
        x = inputs(n)
        hidden = _step(x.sum(1, keepdims=True) - np.arange(1, n + 1) + 0.5)
        status, _, wb = _separable(hidden, _labels(n, parity(n)))
        out = _step(hidden @ wb[:-1] + wb[-1]) if status == 0 else np.zeros(2**n)
        accuracy[f"n={n}"] = float(np.mean(out == _labels(n, parity(n))))
    claim(
        exact_claim(
            all(a == 1 for a in accuracy.values()),
            list(accuracy.values()),
            id="N8.two-layer-xor",
            source="the lecture notes ('why not one layer?'), after " + SOURCE,
            statement="two layers of perceptrons compute XOR (and parity_n, with n hidden units)",
            published=1.0,
            statistic=f"fraction of the 2^n inputs classified right: XOR with explicit weights, "
            f"then parity_n for n in {list(TWO_LAYER_N)} with output weights from a feasible LP",
            interval=(1.0, 1.0),
            details=accuracy,
        )
    )
