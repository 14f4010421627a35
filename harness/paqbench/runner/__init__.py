"""Running a plan: one run at a time, each isolated in its own process by default,
each finished run appended to results.jsonl so that a killed suite resumes."""
