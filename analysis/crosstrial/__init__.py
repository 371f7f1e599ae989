"""Study-level analysis: reads a study's runs from MLflow and compares trials.

Correlations (`correlate`), regularisation effects (`effects`), the bound check (`bound_check`),
figures and the HTML report (`report`). May use `analysis.measure`; never the reverse.
"""
