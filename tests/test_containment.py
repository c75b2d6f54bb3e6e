"""The containment boundary against a real TorchServe: poison requests sent concurrently with
good traffic are each answered on their own, every good request succeeds, no worker dies."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests

from .conftest import IRIS_ROWS, Client, probs_of

pytestmark = pytest.mark.integration

# (body, content type or None for curl -d's form encoding, statuses allowed, words in the answer)
POISON = [
    (b"[1" + b"0" * 400 + b", 3.5, 1.4, 0.2]", "application/json", {200}, "is a number too large"),
    (b"[" + b"9" * 4400 + b", 3.5, 1.4, 0.2]", "application/json", {400}, "number too long"),
    (b"[" * 20_000 + b"]" * 20_000, "application/json", {400}, "nesting deeper than"),
    (b"1,2,3,4\n" + b"7" * 200_000 + b"\n", "text/csv", {200}, "a field is longer than"),
    (b'5.1,3.5,1.4,0.2\n"5.1,3.5,1.4,0.2\n6,3,5,2\n', "text/csv", {200}, "quote left open"),
    (b"[1e39, 3.5, 1.4, 0.2]", "application/json", {200}, "out of float32 range"),
    (b"x\n" * 1_500_000, "text/csv", {413}, "more than the limit"),
    (b"\xff\xfe\x00garbage", "text/csv", {400}, "not UTF-8"),
]


def test_poison_requests_among_concurrent_good_traffic_fail_only_themselves(server, predictor):
    client = Client(server)
    expected = predictor.predict_proba(np.array(IRIS_ROWS))

    def good(_):
        r = client.post(IRIS_ROWS)
        return r.status_code, r.text

    def poison(i):
        body, ctype, statuses, words = POISON[i % len(POISON)]
        r = client.post(body, ctype)
        return i, r.status_code, r.text, statuses, words

    with ThreadPoolExecutor(48) as pool:
        # One request in four is poison, all of them in flight together with the good ones.
        poisons = [pool.submit(poison, i) for i in range(2 * len(POISON))]
        goods = [pool.submit(good, i) for i in range(6 * len(POISON))]
        good_results = [f.result() for f in goods]
        poison_results = [f.result() for f in poisons]
    for status, text in good_results:
        assert status == 200, text[:300]
        np.testing.assert_allclose(
            probs_of(json.loads(text)["predictions"], predictor.classes), expected, atol=1e-6
        )
    for i, status, text, statuses, words in poison_results:
        assert status in statuses and words in text, (i, status, text[:300])
        assert "NaN" not in text and "Infinity" not in text, i
        json.loads(text)
    # Nothing died: the server still answers at once.
    assert client.post(IRIS_ROWS[:1]).status_code == 200


def test_curl_d_without_a_content_type_gets_a_400_that_says_what_to_send(server, predictor):
    """What `curl -d '...'` sends is application/x-www-form-urlencoded; TorchServe 0.12's
    frontend decodes it as a form and drops text without `=` or `&` (every JSON or CSV body
    of rows): the handler cannot read it, so it says how to send it."""
    url = f"{server.inference_url}/predictions/iris"
    for body in (b"[[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]", b"5.1,3.5,1.4,0.2"):
        r = requests.post(
            url,
            data=body,
            headers={**server.headers(), "Content-Type": "application/x-www-form-urlencoded"},
            timeout=30,
        )
        assert r.status_code == 400, r.text
        assert "-H 'Content-Type: application/json'" in r.json()["message"]


def test_csv_answers_say_they_are_utf8(server):
    r = Client(server).post("café,1,2,3\n", "text/csv", Accept="text/csv")
    assert r.status_code == 200
    assert r.headers["Content-Type"].lower().replace(" ", "") == "text/csv;charset=utf-8"
    assert "'café'" in r.text
