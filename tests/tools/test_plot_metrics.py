from tools.plot_metrics import plot_metrics, read_metrics


def test_plot_reads_csvlogger_metrics(tmp_path):
    run = tmp_path / "logs" / "version_0"
    run.mkdir(parents=True)
    (run / "metrics.csv").write_text("epoch,step,train/loss,val/acc\n0,0,2.5,\n0,1,2.0,\n0,1,,0.25\n")
    assert read_metrics(run / "metrics.csv") == {"train/loss": [(0, 2.5), (1, 2.0)], "val/acc": [(1, 0.25)]}
    png = plot_metrics(str(tmp_path))
    assert png == run / "metrics.png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
