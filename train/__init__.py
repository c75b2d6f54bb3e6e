"""Training: data loading, fitting and export. Imports the model and schema from handler/, so
what is trained is what is served."""
