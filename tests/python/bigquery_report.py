"""A BigQuery report job, written as seed 003's ECS job is, minus its credential plumbing.

It finds its credentials the way every Google client library does, through
application-default credentials (google.auth.default() inside bigquery.Client), and knows
nothing of AWS, fedcred or key files. BIGQUERY_API_ENDPOINT, when set, points the client at
another endpoint, as client_options allow; the project comes from the environment.

Prints one JSON object: the rows the query returned and the bytes it processed.
"""
import json
import os

from google.api_core.client_options import ClientOptions
from google.cloud import bigquery

options = None
if os.environ.get("BIGQUERY_API_ENDPOINT"):
    options = ClientOptions(api_endpoint=os.environ["BIGQUERY_API_ENDPOINT"])
client = bigquery.Client(client_options=options)

sql = """
SELECT region, orders
FROM `sales.daily_orders`
LIMIT 10
"""
job = client.query(sql, job_config=bigquery.QueryJobConfig(dry_run=False))
rows = [dict(row.items()) for row in job.result()]
assert job.errors is None, f"errors: {job.errors}"
print(
    json.dumps(
        {
            "project": client.project,
            "rows": rows,
            "bytes_processed": job.total_bytes_processed,
        }
    )
)
