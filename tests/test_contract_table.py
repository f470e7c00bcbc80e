"""Every clause of DESIGN §3 is exercised and proven able to fail: it has a mutant recorded as caught — by the explorer
within its budget where the explorer can reach the clause (benchmarks/results/explore_mutants.json, regenerated on
demand, not in CI), else by a named scenario, probe or contract test that runs in CI — and docs/contract.md is the
table generated from the code."""
from __future__ import annotations

from harness.programs.clauses import CLAUSES, EXPLORER
from tests.contract_table import coverage, explorer_catches, mutant_clauses


def test_every_mutant_names_the_clauses_it_breaks() -> None:
    known = {clause.id for clause in CLAUSES}
    for mutant, ids in mutant_clauses().items():
        assert ids and set(ids) <= known, f"tests/mutants/{mutant}.py: CLAUSES {ids!r} (known: C1 … C{len(known)})"


def test_every_clause_has_a_mutant_that_is_caught() -> None:
    missing = []
    for row in coverage():
        clause = row["clause"]
        if clause.reach == EXPLORER and not row["explorer"]:
            missing.append(f"{clause.id} ({clause.text[:60]}…): no mutant the explorer catches within budget "
                           f"(mutants: {sorted(row['mutants']) or 'none'})")
        elif not any(row["mutants"].values()):
            missing.append(f"{clause.id}: no mutant recorded as caught (mutants: {sorted(row['mutants']) or 'none'})")
    assert not missing, "\n".join(missing)


def test_the_explorer_results_name_existing_mutants() -> None:
    assert set(explorer_catches()) <= set(mutant_clauses())
