"""The notebooks' cells: one function per result, each writing its table or figure under results/ and showing
it (print, display); what a later cell needs is returned. The notebooks hold no logic of their own."""
from pathlib import Path
from types import SimpleNamespace

from IPython.display import Markdown, display

from . import analysis, dataset, figures, reading_eval, ship, stats, study, tables
from .config import make_config, shown
from .tool.photos import truth_mask
from .predictor import Predictor
from .tool.recognisers import RapidReader
from .tool.model import load_reader

TITLES = {"table1": "Table I: loss ablation (AttU, gates 1+2)", "table2": "Table II: gate position (AttU, 0.36(CE+Dice))",
          "table3": "Table III: U-Net vs Attention U-Net",
          "loss_scale": "Loss scale: 0.36(CE+Dice) against 1.0(CE+Dice), same seeds"}


def _csv(df, results, name, **kw):
    (Path(results) / "tables").mkdir(parents=True, exist_ok=True)
    df.to_csv(Path(results) / "tables" / name, **kw)


def _shipped(results):
    """The shipped segmenter in fp32 on any CPU, so that notebooks 05 and 06 give the same figures on every CPU."""
    return Predictor.load(Path(results) / "models" / "attunet.pt", "cpu", cpu_bf16=False)


# 01_data_exploration

def _root(profile, data):
    return dataset.resolve_data(make_config(profile, data=data))


def data_card(profile, results, data=""):
    """tables/data_card.csv, the photos that cannot be used, and the card's statistics; the card, for the next cells."""
    root = _root(profile, data)
    card = dataset.data_card(root, dataset.split_file(root))
    _csv(card, results, "data_card.csv", index=False)
    bad = card[card["error"] != ""]
    print(f"{root.name}: {len(card)} labelled photos ({len(bad)} unusable), {len(dataset.unlabelled_photos(root))} unlabelled photos")
    for e in bad["error"]:
        print("  ", e)
    display(card.describe().round(4))
    return card


def photo_sizes(card, results):
    """Photo sizes and bytes."""
    figures.save(figures.photo_sizes(card), results, "01_sizes_bytes")


def region_share(card, results):
    """The region's share of the photo, and how many labels list two readings."""
    figures.save(figures.region_share(card), results, "01_mask_share")
    print("photos with several candidate readings (a wheel caught half-turned):", int((card["n_readings"] > 1).sum()))


def examples(card, profile, results, data=""):
    """Example photos with their labelled quads and readings."""
    pairs = {s: (p, l) for s, p, l in dataset.find_pairs(_root(profile, data))}
    figures.save(figures.examples(card, pairs), results, "01_examples")


def split_summary(card, profile, data=""):
    """Where the split lives, and photos, bytes and region share per part."""
    print(f"split file: {shown(dataset.split_file(_root(profile, data)))}")
    display(dataset.split_summary(card))


# 02_training

def seed_runs(profile, results, seeds, data=""):
    """The paper's AttU for every seed (trained or reused): one row per run, then mean ± SD over seeds."""
    summaries = [study.ensure_run(results, profile, s, data) for s in seeds]
    print(f"{summaries[0]['n_train']} train / {summaries[0]['n_val']} val / {summaries[0]['n_test']} test photos; "
          "test metrics at each photo's original size, from the best-validation-Dice checkpoint")
    display(tables.runs_table(summaries).round(4))
    display(Markdown(tables.markdown_table(tables.seed_table({"AttU (gates 1+2, 0.36(CE+Dice))": summaries}),
                                           title="Test metrics, mean ± SD over seeds (ddof=1), %")))


def learning_curves(profile, results, seeds):
    """Every seed's learning curves and Dice against training time, and the time to each quality."""
    histories = {f"seed {s}": study.load_run(results, profile, s)[1] for s in seeds}
    figures.save(figures.learning_curves(histories), results, "02_learning_curves")
    figures.save(figures.dice_vs_time(histories), results, "02_dice_vs_time")
    display(tables.time_to_quality(histories))


def ship_segmenter(profile, results, seeds, data=""):
    """results/models/attunet.pt (ship.segmenter): the candidates, the shipped run's curves, its README."""
    path, best, candidates = ship.segmenter(results, profile, seeds, data)
    print(shown(path), f"{path.stat().st_size / 1e6:.2f} MB")
    display(candidates.round(4))
    runs = candidates.run[candidates.seed == best["seed"]]
    figures.save(figures.learning_curves(study.run_histories(results, profile, runs)), results, "02_ship_learning_curves")
    print((Path(results) / "models" / "README.md").read_text())


# 03_ablations and 04_comparison

def table(name, profile, results, seeds, data=""):
    """One of the study's tables (study.TABLES, or loss_scale): its runs, tables/<name>.csv and .md."""
    runs = study.ensure_table(results, name, profile, seeds, data)
    md = tables.write_table(tables.seed_table(runs), name, results, tables.PAPER.get(name), TITLES[name])
    display(Markdown(md.read_text()))


def loss_scale_traces(profile, results, seeds):
    """0.36(CE+Dice) against 1.0(CE+Dice), epoch by epoch, for the first seed: tables/loss_scale_seed0.csv."""
    scale = study.loss_scale_traces(results, profile, seeds[0])
    _csv(scale, results, f"loss_scale_seed{seeds[0]}.csv", index=False)
    print(f"seed {seeds[0]}: training-loss ratio 0.36 / 1.0 per epoch {scale['loss_ratio'].min():.4f} .. "
          f"{scale['loss_ratio'].max():.4f}; largest per-epoch validation-Dice difference {scale['val_dice_diff'].abs().max():.2e}")
    display(scale.round(5))


def comparisons(profile, results, seeds):
    """Seed-level statistics of every pair the paper compares: tables/comparisons.csv and .md, per-seed differences."""
    comp = tables.comparisons(results, profile, seeds)
    _csv(comp, results, "comparisons.csv", index=False)
    md = tables.comparisons_markdown(comp)
    (Path(results) / "tables" / "comparisons.md").write_text(md)
    figures.save(figures.per_seed_differences(comp), results, "04_per_seed_differences")
    display(Markdown(md))


def row_learning_curves(profile, results, seeds):
    """Validation Dice by epoch of every row and seed."""
    figures.save(figures.row_learning_curves(study.histories(results, profile, seeds)), results, "04_learning_curves_all_rows")


def paired_differences(profile, results, seeds):
    """Per test photo, AttU - U-Net Dice averaged over seeds."""
    diff = stats.per_image_dice_diff(study.row_metrics(results, profile, seeds, "U-Net"), study.row_metrics(results, profile, seeds, "AttU"))
    figures.save(figures.paired_histogram(diff), results, "04_paired_dice_difference")


def _fig3(profile, results, seeds, data):
    """The photos Fig. 3 shows (study.fig3_picks) with their labels, their notes, and both models of the first seed."""
    photos, labels = study.test_pairs(profile, data)
    by_stem = {p.stem: (p, l) for p, l in zip(photos, labels)}
    picks = study.fig3_picks(results, profile, seeds, k=2)
    models = {"U-Net": Predictor.load(study.run_checkpoint(results, profile, seeds[0], model="unet"), "cpu", cpu_bf16=False),
              "AttU": Predictor.load(study.run_checkpoint(results, profile, seeds[0]), "cpu", cpu_bf16=False)}
    notes = [f"AttU - U-Net over {len(seeds)} seeds: {100 * d:+.1f} pts; masks: seed {seeds[0]}" for _, d in picks]
    return [by_stem[s] for s, _ in picks], notes, models


def fig3(profile, results, seeds, data=""):
    """Fig. 3: the test photos where AttU beats U-Net most and least, both models' masks of the first seed."""
    pairs, notes, models = _fig3(profile, results, seeds, data)
    figures.save(figures.comparison(models, [p for p, _ in pairs], [l for _, l in pairs], notes), results, "04_fig3_overlays")


def attention_maps(profile, results, seeds, data=""):
    """The first seed's AttU attention coefficients on Fig. 3's photos."""
    pairs, _, models = _fig3(profile, results, seeds, data)
    figures.save(figures.attention_maps(models["AttU"], [p for p, _ in pairs]), results, "04_attention_maps")


# 05_storage_analysis

def crop_rule(profile, results, data=""):
    """The crop rule chosen on validation (analysis.choose_crop_rule; tables/05_val_needed_margins.csv), shipped
    as compress's default."""
    predictor = _shipped(results)
    photos, labels = dataset.split_pairs(make_config(profile, data=data), "val")
    truths = [truth_mask(p, l) for p, l in zip(photos, labels)]
    needs = analysis.needed_margins(predictor, photos, truths)
    _csv(needs, results, "05_val_needed_margins.csv", index=False)
    rule, rule_table = analysis.choose_crop_rule(needs)
    ship.crop_rule(results, rule, rule_table)
    print(f"validation ({len(photos)} photos): {rule}; stored in the shipped checkpoint as compress's default")
    display(rule_table.round(4))


def validation_crops(profile, results, data=""):
    """The shipped crop rule and the trade-off rules on validation: tables/05_val_crops_by_rule.csv, and the rule's saving."""
    predictor = _shipped(results)
    photos, labels = dataset.split_pairs(make_config(profile, data=data), "val")
    truths = [truth_mask(p, l) for p, l in zip(photos, labels)]
    rule = predictor.crop_rule
    crops, _, _ = analysis.crop_study(predictor, photos, truths, analysis.trade_off_rules(rule), rules_only=True)
    _csv(crops, results, "05_val_crops_by_rule.csv", index=False)
    display(analysis.saving_at(crops, rule))


def test_crops(profile, results, data=""):
    """The test split cropped by the shipped rule and the trade-off rules, by format, and against whole-photo
    baselines at equal bytes; prints the headline (bytes saved, windows kept) and returns it all for the next cells."""
    predictor = _shipped(results)
    photos, labels = study.test_pairs(profile, data)
    test = SimpleNamespace(rule=predictor.crop_rule, photos=photos, truths=[truth_mask(p, l) for p, l in zip(photos, labels)])
    test.crops, test.by_format, test.baselines = analysis.crop_study(predictor, photos, test.truths, analysis.trade_off_rules(test.rule))
    _csv(test.crops, results, "05_crops_by_rule.csv", index=False)
    h = test.headline = analysis.saving_at(test.crops, test.rule)
    print(f"{h['photos']} test photos, {test.rule}: mean {h['mean_kb_in']:.1f} KB -> {h['mean_kb_out']:.1f} KB, "
          f"saving {h['mean_kb_saved']:.1f} KB per photo ({h['saved_pct']:.1f}% of bytes; the paper: about 2 MB per photo); "
          f"crops by {h['methods']}")
    print(f"the crop keeps the whole labelled window on {h['fully_kept_pct']:.1f}% of test photos; "
          f"stored whole: {h['no_region']} with no region, {h['uncertain']} uncertain")
    return test


def crop_misses(test, results):
    """The test photos whose crop by the shipped rule loses part of the labelled window, listed and drawn."""
    miss = analysis.misses(test.crops, test.rule)
    display(miss[["image", "gt_kept", "x0", "y0", "x1", "y1"]])
    fig = figures.crop_misses(miss, test.photos, test.truths)
    if fig is not None:
        figures.save(fig, results, "05_misses")


def savings_curves(test, results):
    """Bytes saved against windows kept by margin and box probability, and bytes by format."""
    curve, formats = analysis.margin_curve(test.crops), analysis.format_table(test.by_format, test.crops, test.rule)
    figures.save(figures.savings_curves(curve, formats, test.headline["mean_kb_out"], test.rule), results, "05_savings_curves")
    display(curve.round(2))
    display(formats.round(1))


def baselines(test, results):
    """The window's legibility (PSNR, SSIM) when the crop's bytes are spent on the whole photo instead: tables/05_baselines.csv."""
    base = analysis.baseline_table(test.baselines).round(3)
    _csv(base, results, "05_baselines.csv")
    display(base)


def unlabelled_compress(profile, results, data=""):
    """`compress` over the unlabelled photos, as a user runs it: tables/05_unlabelled_manifest.csv and its summary."""
    rows, summary = analysis.compress_summary(_shipped(results), dataset.unlabelled_photos(_root(profile, data))[0].parent)
    _csv(rows, results, "05_unlabelled_manifest.csv", index=False)
    display(summary)


def archive(test, results):
    """An archive of a million photos before and after: tables/05_archive.csv."""
    table = analysis.archive_table(test.crops, test.rule)
    _csv(table, results, "05_archive.csv", index=False)
    display(table.round(3))


# 06_reading

def _test_reads(reads):
    return reads[reads["way"] == reading_eval.WAYS[3]]


def rapidocr_reads(profile, results, data=""):
    """The off-the-shelf recogniser on the test split, five ways: tables/06_readings.csv and
    06_reading_accuracy.csv; the reads."""
    photos, labels = study.test_pairs(profile, data)
    found = reading_eval.reading_study(_shipped(results), RapidReader(), photos, labels)
    _csv(found, results, "06_readings.csv", index=False)
    acc = reading_eval.accuracy_table(found).round(2)
    _csv(acc, results, "06_reading_accuracy.csv")
    display(acc)
    return found


def train_own_reader(profile, results, data=""):
    """Our CRNN on every train photo (reading_eval.train_own_reader): (OwnReader, history)."""
    own, history = reading_eval.train_own_reader(make_config(profile, data=data), _shipped(results))
    best = history.loc[history["val_exact"].idxmax()]
    print(f"own CRNN: best validation exact (billing; predicted quads, one read) {best['val_exact']:.3f} at epoch {int(best['epoch'])}")
    return own, history


def voting(own, profile, results, data=""):
    """Validation exact readings by votes and corner jitter: tables/06_val_voting.csv."""
    photos, labels = dataset.split_pairs(make_config(profile, data=data), "val")
    votes = reading_eval.voting_on_validation(_shipped(results), own, photos, labels).round(2)
    _csv(votes, results, "06_val_voting.csv", index=False)
    display(votes)


def out_of_fold(profile, results, data="", folds=5):
    """The train split read by fold CRNNs that did not train on it: tables/06_train_out_of_fold_reads.csv and
    the CRNNs trained (06_train_out_of_fold_crnns.csv); the reads."""
    oof, crnns = reading_eval.out_of_fold_reads(make_config(profile, data=data), _shipped(results), folds)
    _csv(oof, results, "06_train_out_of_fold_reads.csv", index=False)
    _csv(crnns.round(4), results, "06_train_out_of_fold_crnns.csv", index=False)
    display(crnns.round(4))
    return oof


def accept_rule(oof, results):
    """The half-turn threshold and the accept rule, chosen on the out-of-fold reads: tables/06_accept_rules.csv;
    (AcceptRule, the table of every rule tried)."""
    half_turned, half_table = reading_eval.half_turned_threshold(oof)
    display(half_table.round(3))
    rule, rule_table = reading_eval.choose_accept_rule(oof, half_turned=half_turned)
    _csv(rule_table.round(4), results, "06_accept_rules.csv", index=False)
    print(rule)
    fit = rule_table["chosen"] | ((rule_table["upper_error"] <= reading_eval.TARGET_ERROR) & (rule_table["gross"] == 0))
    display(rule_table[fit].sort_values("coverage", ascending=False).head(8).round(4))
    return rule, rule_table


def validation_reads(own, rule, profile, results, data=""):
    """The tool's reads of the validation split: tables/06_val_reads.csv, and what the rule accepts there."""
    photos, labels = dataset.split_pairs(make_config(profile, data=data), "val")
    reads = reading_eval.tool_reads(_shipped(results), own, photos, labels)
    _csv(reads, results, "06_val_reads.csv", index=False)
    display(reading_eval.accepted(reads, rule))
    return reads


def own_reads(found, profile, results, data=""):
    """The shipped reader (ship.reader) on the test split, five ways: tables/06_readings_own.csv, and both
    readers side by side (06_reader_comparison.csv); the reads."""
    photos, labels = study.test_pairs(profile, data)
    own = load_reader(Path(results) / "models" / "attunet.pt", "own")
    own_found = reading_eval.reading_study(_shipped(results), own, photos, labels)
    _csv(own_found, results, "06_readings_own.csv", index=False)
    both = reading_eval.compare_readers(reading_eval.accuracy_table(found), reading_eval.accuracy_table(own_found)).round(2)
    _csv(both, results, "06_reader_comparison.csv")
    display(both)
    return own_found


def test_accepted(own_found, rule):
    """What the accept rule accepts on the test split, and how often it is right."""
    display(reading_eval.accepted(_test_reads(own_found), rule))


def risk_coverage(val_reads, own_found, rule, results):
    """Accuracy of accepted readings against the share accepted, validation and test, with the rule's point."""
    reads = {"validation": val_reads, "test": _test_reads(own_found)}
    points = {k: (a["coverage_pct"], a["ok_right_billing_pct"]) for k, r in reads.items() for a in [reading_eval.accepted(r, rule)]}
    figures.save(figures.risk_coverage({k: reading_eval.risk_coverage(r) for k, r in reads.items()}, points), results, "06_risk_coverage")


def corner_errors(found):
    """The predicted quads' mean corner error against the labelled quads, photo pixels."""
    display(_test_reads(found)["corner_error_px"].describe().round(2))


def failures(own_found, profile, results, data=""):
    """The tool's wrong test readings (billing, ambiguity accepted), lowest confidence first, listed and drawn."""
    photos, labels = study.test_pairs(profile, data)
    display(reading_eval.failures(own_found))
    fig = figures.reading_examples(own_found, photos, labels, _shipped(results))
    if fig is not None:
        figures.save(fig, results, "06_reading_failures")


def verdict(found, own_found):
    """The paper's claim that the crop helps a machine read the meter, in words."""
    print(reading_eval.verdict(reading_eval.accuracy_table(found), reading_eval.accuracy_table(own_found)))


# 07_tuning

def tuning_simulation(profile, results, data="", folds=5):
    """The months of corrections simulated (simulation.simulate) in a folder deleted after: tables/07_tuning_months.csv,
    07_base_fold_crnns.csv and figures/07_tuning_months.png; the months table."""
    import tempfile
    from . import simulation
    with tempfile.TemporaryDirectory() as work:
        table, crnns = simulation.simulate(make_config(profile, data=data), Path(results) / "models" / "attunet.pt", work, folds)
    _csv(table.round(4), results, "07_tuning_months.csv", index=False)
    _csv(crnns.round(4), results, "07_base_fold_crnns.csv", index=False)
    figures.save(figures.tuning_months(table), results, "07_tuning_months")
    display(table.round(2))
    return table


def tuning_verdict(table):
    """The target and the --with-ok rule of docs/protocol.md, judged on the months table."""
    from .simulation import verdict
    display(Markdown(verdict(table)))
