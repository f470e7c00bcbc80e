"""Reports over many runs: merge results files, render the matrix (markdown and one self-contained HTML page
with embedded plots), and the regression gate. Reads results files only; runs nothing."""
