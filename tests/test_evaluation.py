"""End-to-end retrieval evaluation on real data (ml-latest-small, amazon-arts-office)."""

import json

import numpy as np
import pytest

from llmrec.data import cross_domain_split
from llmrec.errors import ConfigError
from llmrec.evaluation.experiment import EvalConfig, run_evaluation
from llmrec.evaluation.report import write_report


def test_llamarec_protocol_counts(ml_small_split):
    split = ml_small_split
    assert split.n_users == 610
    assert len(split.catalog) == 3650
    # every user evaluated; held-out items never in the training history
    assert (split.test >= 0).all()
    for u in range(split.n_users):
        assert split.test[u] not in split.train[u]
        assert split.valid[u] not in split.train[u]
        assert split.test[u] not in split.history_items("test", u)


def test_shifted_split_holds_out_earlier_items(ml_small_split):
    split = ml_small_split
    shifted = split.shifted(2)
    assert split.shifted(0) is split
    for u in range(split.n_users):
        seq = split.full_sequences()[u]
        assert len(seq) == len(split.train[u]) + 2 * (split.test[u] >= 0)
        if len(seq) >= 5:
            # two steps back: the old validation item is gone, the item before it is the new test item
            assert shifted.test[u] == seq[-3] and shifted.valid[u] == seq[-4]
            assert list(shifted.train[u]) == list(seq[:-4])
            assert list(shifted.sequences("test")[u]) == list(seq[:-3])
        else:
            assert shifted.test[u] == -1
    with pytest.raises(ValueError, match="window"):
        split.shifted(-1)


def test_evaluation_report_and_determinism(ml_small_dir, tmp_path):
    cfg = EvalConfig(dataset=str(ml_small_dir), methods=["popularity", "itemknn"], seed=3)
    first = run_evaluation(cfg)
    second = run_evaluation(cfg)
    m1 = first["groups"]["all"]["methods"]
    m2 = second["groups"]["all"]["methods"]
    for name in ("popularity", "itemknn"):
        assert m1[name]["metrics"] == m2[name]["metrics"]
    assert first["groups"]["all"]["users"] == 610
    # item-item CF beats popularity on MovieLens
    assert m1["itemknn"]["metrics"]["ndcg@10"] > m1["popularity"]["metrics"]["ndcg@10"]
    assert m1["popularity"]["user_coverage"] == 0.0 or m1["popularity"]["user_coverage"] <= 1.0
    paths = write_report(first, tmp_path)
    payload = json.loads(paths["json"].read_text())
    for key in ("dataset", "protocol", "groups", "config", "seed", "elapsed_seconds"):
        assert key in payload
    assert "| itemknn |" in paths["markdown"].read_text()
    assert paths["plot"].stat().st_size > 1000


def test_cross_domain_cold_users_are_hidden_from_fit(arts_office_dir):
    from llmrec.data import clean, load_dataset

    data = clean(load_dataset(arts_office_dir))
    cd = cross_domain_split(data, "arts", "office", cold_fraction=0.2, seed=0)
    assert cd.cold.sum() > 0
    office = cd.catalog.domain_mask("office")
    fit = cd.fit_sequences("test")
    cold_users = np.flatnonzero(cd.cold)
    for u in cold_users[:200]:
        assert not office[fit[u]].any(), "a cold user's office history leaked into the fit data"
    for u in np.flatnonzero(~cd.cold)[:200]:
        assert cd.target_split.test[u] not in fit[u]
    hist = cd.histories("cold", "test", cold_users[:5])
    assert all(not office[h.items].any() for h in hist)


@pytest.mark.slow
def test_cross_domain_evaluation_runs(arts_office_dir):
    cfg = EvalConfig(
        dataset=str(arts_office_dir),
        methods=["popularity", "bm25", "itemknn"],
        source="arts",
        target="office",
    )
    report = run_evaluation(cfg)
    assert set(report["groups"]) == {"warm", "cold"}
    warm = report["groups"]["warm"]["methods"]
    cold = report["groups"]["cold"]["methods"]
    assert warm["itemknn"]["metrics"]["ndcg@10"] > warm["popularity"]["metrics"]["ndcg@10"]
    assert report["groups"]["cold"]["users"] > 1000
    # cold users are ranked from arts history alone: a real but much weaker signal than warm history
    assert 0 < cold["itemknn"]["metrics"]["recall@20"] < warm["itemknn"]["metrics"]["recall@20"]


def test_typed_titles_match_catalog_titles(ml_small_split):
    from llmrec.data import History

    catalog = ml_small_split.catalog
    hist = History.from_titles(["The Incredibles", "heat", "Toy Story (1995)", "No Such Film Here"], catalog)
    titles = [catalog.titles[i] for i in hist.items]
    assert titles == ["Incredibles, The (2004)", "Heat (1995)", "Toy Story (1995)"]
    assert hist.text == "No Such Film Here"


def test_new_items_are_hidden_from_histories_and_fit(ml_small_dir, ml_small_split):
    from llmrec.data import clean, load_dataset
    from llmrec.data.split import items_first_seen_late

    data = clean(load_dataset(ml_small_dir))
    late = items_first_seen_late(data, ml_small_split.catalog, 0.1)
    table = data.interactions.select_columns(["item_id", "timestamp"]).to_pandas()
    cutoff = np.quantile(table["timestamp"].to_numpy(dtype=np.float64), 0.9)
    first = table.groupby("item_id")["timestamp"].min()
    ids = ml_small_split.catalog.item_ids
    assert set(ids[late]) == set(first[first > cutoff].index)
    split = ml_small_split.hide_items(late)
    for stage in ("valid", "test"):
        seen = np.concatenate(split.sequences(stage))
        assert not late[seen].any()  # no generator is fit on a new item
    assert (split.test == ml_small_split.test).all()  # ... and they are still held out
    assert not late[np.concatenate(split.shifted(2).sequences("test"))].any()  # windows keep them hidden
    assert late[split.test].sum() > 0
    with pytest.raises(ValueError, match="one boolean per item"):
        ml_small_split.hide_items(late[:-1])


def test_new_item_protocol_collaborative_generators_cannot_reach_new_items(ml_small_dir):
    cfg = EvalConfig(
        dataset=str(ml_small_dir),
        methods=["popularity", "ease", "bm25"],
        new_items_fraction=0.3,
        slices=["new_items"],
        new_item_max_train=1,
        bootstrap=0,
    )
    report = run_evaluation(cfg)
    assert "new_items" in report["protocol"]
    ranks = report["per_user_ranks"]["all"]
    mask = np.zeros(len(ranks["ease"]), dtype=bool)
    mask[report["slice_users"]["new items (<1 train interactions)"]] = True
    assert mask.sum() > 40
    for method in ("popularity", "ease"):  # no interactions, no score: never in the top 20
        assert (np.asarray(ranks[method])[mask] > 20).all()
    assert (np.asarray(ranks["bm25"])[mask] <= 20).any()  # text reaches them
    with pytest.raises(ConfigError, match="new_items_fraction"):
        EvalConfig(dataset=str(ml_small_dir), new_items_fraction=1.0)


@pytest.fixture(scope="module")
def office_data(arts_office_dir):
    """The office domain of amazon-arts-office alone (only_domain), cleaned as the suites do."""
    from llmrec.config import DataConfig
    from llmrec.pipeline import prepare_data

    return prepare_data(DataConfig(dataset=str(arts_office_dir), only_domain="office"))


def test_only_domain_keeps_one_domain_and_refuses_unknown_ones(arts_office_dir, office_data):
    from llmrec.config import DataConfig
    from llmrec.data import load_dataset

    assert set(office_data.interactions.unique("domain")) == {"office"}
    assert set(office_data.items.unique("domain")) == {"office"}
    assert any(line.startswith("only_domain: kept") for line in office_data.log)
    raw = load_dataset(arts_office_dir)
    office = raw.only_domain("office")
    assert len(office.interactions) == sum(d == "office" for d in raw.interactions["domain"])
    # the k-core runs on the office interactions alone: fewer users survive than in both domains
    assert 1000 < office_data.stats()["users"] < raw.stats()["users"]
    with pytest.raises(ConfigError, match=r"only_domain='music'.*domains present: \['arts', 'office'\]"):
        raw.only_domain("music")
    with pytest.raises(ConfigError, match="only_domain='office'.*cross-domain"):
        DataConfig(dataset=str(arts_office_dir), only_domain="office", source="arts", target="office")
    with pytest.raises(ConfigError, match="target='arts'"):
        DataConfig(dataset=str(arts_office_dir), only_domain="office", target="arts")


def test_sampled_new_items_are_seeded_hidden_from_fit_and_still_held_out(office_data):
    from llmrec.data import leave_one_out
    from llmrec.data.split import sampled_new_items

    split = leave_one_out(office_data)
    sample = sampled_new_items(split.catalog, 0.06, seed=0)
    assert sample.sum() == round(0.06 * len(split.catalog))
    assert (sampled_new_items(split.catalog, 0.06, seed=0) == sample).all()  # seeded
    assert (sampled_new_items(split.catalog, 0.06, seed=1) != sample).any()
    hidden = split.hide_items(sample)
    for stage in ("valid", "test"):
        assert not sample[np.concatenate(hidden.sequences(stage))].any()  # no fit sees them
        for h in hidden.histories(stage, hidden.eval_users(stage)[:500]):
            assert not sample[h.items].any()
    assert (hidden.test == split.test).all() and (hidden.valid == split.valid).all()  # still held out
    assert 200 < sample[split.test[split.test >= 0]].sum() < 600
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(ConfigError, match="new_items_sample"):
            sampled_new_items(split.catalog, bad)


def test_new_items_sample_settings_are_checked(ml_small_dir):
    with pytest.raises(ConfigError, match=r"new_items_sample=1\.5"):
        EvalConfig(dataset=str(ml_small_dir), new_items_sample=1.5)
    with pytest.raises(ConfigError, match=r"new_items_sample=0\.1.*new_items_fraction=0\.2"):
        EvalConfig(dataset=str(ml_small_dir), new_items_sample=0.1, new_items_fraction=0.2)
    with pytest.raises(ConfigError, match=r"new_items_sample=0\.1.*only_domain"):
        EvalConfig(dataset=str(ml_small_dir), new_items_sample=0.1, source="arts", target="office")


def test_new_item_sample_protocol_on_one_domain(arts_office_dir, office_data, tmp_path):
    cfg = EvalConfig(
        dataset=str(arts_office_dir),
        only_domain="office",
        methods=["popularity", "bm25"],
        new_items_sample=0.06,
        slices=["new_items"],
        new_item_max_train=1,
        bootstrap=0,
        cache_dir=str(tmp_path),
    )
    report = run_evaluation(cfg, office_data)
    n_hidden = round(0.06 * report["protocol"]["items"])
    assert report["protocol"]["new_items"].startswith(
        f"the {n_hidden} items of a seeded uniform sample (0.06 of the 4485 catalog items, seed 0)"
    )
    assert "'office'" in report["protocol"]["only_domain"]
    ranks = report["per_user_ranks"]["all"]
    users = report["slice_users"]["new items (<1 train interactions)"]
    assert len(users) > 200
    assert (np.asarray(ranks["popularity"])[users] > 20).all()  # never reaches a new item
    assert (np.asarray(ranks["bm25"])[users] <= 20).any()  # the item text does
    # the sample is part of the cache key: another fraction recomputes every list
    other = run_evaluation(EvalConfig(**{**cfg.to_dict(), "new_items_sample": 0.1}), office_data)
    assert other["cache"]["candidates"]["misses"] == 2
    assert len(other["slice_users"]["new items (<1 train interactions)"]) > len(users)
