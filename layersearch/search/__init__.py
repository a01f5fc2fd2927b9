"""The search service: the genetic algorithm, the evaluator pool and the result cache."""
