"""Reading written corpora back: stats, the HTML report, validation and export to other formats."""
