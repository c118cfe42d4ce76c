"""Server-side query evaluation: operators, coercion, virtual columns, ordering."""

from __future__ import annotations

import pytest

from mlops_vast.sim import query as q

ROWS = [
    {"id": 3, "gpu_name": "RTX 4090", "num_gpus": 1, "gpu_ram": 24564, "reliability": 0.99,
     "verification": "verified", "geolocation": "Texas, US", "hosting_type": 0, "dph_total": 0.40,
     "driver_vers": 550054014, "cuda_max_good": 12.4, "rentable": True, "score": 10.0},
    {"id": 1, "gpu_name": "A100 SXM4", "num_gpus": 2, "gpu_ram": 81920, "reliability": 0.93,
     "verification": "unverified", "geolocation": "Quebec, CA", "hosting_type": 1, "dph_total": 2.5,
     "driver_vers": 535086005, "cuda_max_good": 12.2, "rentable": True, "score": 5.0},
    {"id": 2, "gpu_name": "RTX 3090", "num_gpus": 1, "gpu_ram": 24576, "reliability": 0.97,
     "verification": "verified", "geolocation": "North Holland, NL", "hosting_type": 0, "dph_total": 0.2,
     "driver_vers": 560035003, "cuda_max_good": 12.6, "rentable": True, "score": None},
]
COLUMNS = set(ROWS[0])


def ids(filters: dict, order: list | None = None) -> list[int]:
    predicate = q.build_predicate(filters, COLUMNS, q.offer_virtual_columns())
    rows = [row for row in ROWS if predicate(row)]
    return [row["id"] for row in q.sort_rows(rows, q.parse_order(order or []))]


@pytest.mark.parametrize(("filters", "expected"), [
    ({"num_gpus": {"eq": "1"}}, [2, 3]),  # the CLI sends numbers as strings
    ({"reliability": {"gt": "0.95"}}, [2, 3]),
    ({"gpu_ram": {"gte": 24000.0}, "num_gpus": {"lte": "1"}}, [2, 3]),
    ({"num_gpus": {"gte": "2", "lte": "4"}}, [1]),
    ({"gpu_name": {"eq": "RTX_4090"}}, [3]),  # underscores stand for spaces
    ({"gpu_name": {"in": ["RTX 3090", "A100_SXM4"]}}, [1, 2]),
    ({"gpu_name": {"notin": ["RTX 3090"]}}, [1, 3]),
    ({"gpu_name": {"neq": "RTX 3090"}}, [1, 3]),
    ({"verified": {"eq": True}}, [2, 3]),
    ({"verified": {"eq": "false"}}, [1]),
    ({"geolocation": {"in": ["US", "CA"]}}, [1, 3]),
    ({"datacenter": {"eq": True}}, [1]),
    ({"driver_version": {"gte": 550000000}}, [2, 3]),
    ({"cuda_vers": {"gte": "12.4"}}, [2, 3]),
    ({"dph": {"lt": "0.5"}}, [2, 3]),
    ({"rentable": {"eq": True}, "order": [["x", "asc"]], "type": "bid", "limit": 3}, [1, 2, 3]),
    ({"score": {"eq": None}}, [2]),
    ({"reliability": 0.93}, [1]),  # bare value means eq
])
def test_filters(filters: dict, expected: list[int]) -> None:
    assert ids(filters) == expected


def test_order_is_multi_key_nulls_last_and_stable() -> None:
    assert ids({}, [["dph_total", "asc"]]) == [2, 3, 1]
    assert ids({}, [["dph_total", "desc"]]) == [1, 3, 2]
    assert ids({}, [["num_gpus", "asc"], ["dph_total", "desc"]]) == [3, 2, 1]
    assert ids({}, [["score", "desc"]]) == [3, 1, 2]
    assert ids({}, [["score", "asc"]]) == [1, 3, 2]


@pytest.mark.parametrize(("filters", "message"), [
    ({"gpu_ram": {"gte": "lots"}}, "gpu_ram is numeric"),
    ({"colour": {"eq": "red"}}, "colour is not a valid search key"),
    ({"num_gpus": {"like": "1"}}, "unknown operator 'like'"),
    ({"gpu_name": {"in": "RTX 4090"}}, "needs a list"),
    ({"verified": {"gt": True}}, "does not apply to boolean"),
])
def test_bad_queries_name_the_problem(filters: dict, message: str) -> None:
    with pytest.raises(q.QueryError, match=message):
        ids(filters)


def test_bad_order_and_limit() -> None:
    with pytest.raises(q.QueryError, match="direction"):
        q.parse_order([["dph_total", "up"]])
    with pytest.raises(q.QueryError, match="order must be a list"):
        q.parse_order("dph_total")
    with pytest.raises(q.QueryError, match="limit"):
        q.parse_limit("ten", 64, 1000)
    assert q.parse_limit(None, 64, 1000) == 64
    assert q.parse_limit("5000", 64, 1000) == 1000
    assert q.parse_order([["dph", "desc"]], {"dph": "dph_total"}) == [("dph_total", True)]
