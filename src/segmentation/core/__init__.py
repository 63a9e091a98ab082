"""The pure work of the stages: DataFrames and arrays in, results out."""
