-- The bundled sample job (job.yaml) in SQL: score the English reviews with the same entry
-- script, write the scores to Parquet, then look at them next to the reviews.
-- Run it with:  cargo run --release -- sql data/sample/job.sql
-- Relative paths are relative to this file.

CREATE EXTERNAL TABLE reviews STORED AS PARQUET LOCATION 'reviews.parquet';

-- The job's parameters (checked as in job.yaml); parallel_run(...) arguments override them.
SET parallel_run.pip = 'numpy, pandas, pyarrow';
SET parallel_run.source_directory = '.';
SET parallel_run.process_count_per_node = 2;
SET parallel_run.mini_batch_size = '16KB';
SET parallel_run.error_threshold = 10;
SET parallel_run.arguments = '--threshold 0.05';

-- The report goes to ../../out/sample_sql/scores.parquet.logs/.
COPY (
  SELECT * FROM parallel_run((SELECT * FROM reviews WHERE lang = 'en'),
                             entry_script => 'score_reviews.py',
                             output_schema => 'id BIGINT, product VARCHAR, score DOUBLE, label VARCHAR')
) TO '../../out/sample_sql/scores.parquet' STORED AS PARQUET;

CREATE EXTERNAL TABLE scores STORED AS PARQUET LOCATION '../../out/sample_sql/scores.parquet';

SELECT s.product, s.label, count(*) AS reviews, round(avg(r.rating), 2) AS avg_rating
FROM scores s JOIN reviews r ON r.id = s.id
GROUP BY s.product, s.label
ORDER BY s.product, s.label;
