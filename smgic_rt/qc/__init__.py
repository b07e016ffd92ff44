"""Quality control: the QC picture, the HTML report, the QC flag and scores."""
