"""report.html: loading a run's outputs, the facts and sentences, and the page itself."""
