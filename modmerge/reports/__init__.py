"""Reports: tables and plots of baselines and searches."""
