"""Developer tools apart from the product: model directories with seeded random weights and the
benchmarks."""
