"""Charts: the figures optlab draws (Altair, from SQL over the store) and the HTML
report that gathers them with the analyses.

Imports the analysis and store stages and those below; nothing above.
"""
