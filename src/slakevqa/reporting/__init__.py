"""Reports of a run: Markdown and self-contained HTML, built from the run's files alone.

Entry point: :func:`slakevqa.reporting.report.write_report`. Nothing here imports torch.
"""
