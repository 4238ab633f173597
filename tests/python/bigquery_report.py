"""A BigQuery report job, written as seed 003's ECS job is, minus its credential plumbing.

The job does the seed's first three steps: it reads the data mart's view with a query,
exports the result to Cloud Storage with an extract job, and downloads the exported files
into the container. (The fourth, publishing to Tableau, is outside Google.)

It finds its credentials the way every Google client library does, through
application-default credentials (google.auth.default() inside bigquery.Client and
storage.Client), and knows nothing of AWS, fedcred or key files. BIGQUERY_API_ENDPOINT and
STORAGE_API_ENDPOINT, when set, point the clients at other endpoints, as client_options
allow; the project comes from the environment, the bucket from EXPORT_BUCKET.

Prints one JSON object: the rows the query returned, the bytes it processed, the objects
exported and the rows read back from the downloaded files.
"""
import csv
import io
import json
import os

from google.api_core.client_options import ClientOptions
from google.cloud import bigquery, storage


def options(variable):
    endpoint = os.environ.get(variable)
    return ClientOptions(api_endpoint=endpoint) if endpoint else None


client = bigquery.Client(client_options=options("BIGQUERY_API_ENDPOINT"))

# 1. Read the data mart's view.
sql = """
SELECT region, orders
FROM `sales.daily_orders`
LIMIT 10
"""
job = client.query(sql, job_config=bigquery.QueryJobConfig(dry_run=False))
rows = [dict(row.items()) for row in job.result()]
assert job.errors is None, f"errors: {job.errors}"

# 2. Export the view's data to Cloud Storage: a view cannot be extracted, its query's result
#    table can.
bucket = os.environ.get("EXPORT_BUCKET", "acme-analytics-exports")
prefix = f"daily_orders/{job.job_id}/"
extract = client.extract_table(
    job.destination,
    f"gs://{bucket}/{prefix}part-*.csv",
    job_config=bigquery.ExtractJobConfig(destination_format="CSV"),
)
extract.result()
assert extract.errors is None, f"errors: {extract.errors}"

# 3. Download the exported files (the storage client checks each file's CRC32C).
storage_client = storage.Client(
    project=client.project, client_options=options("STORAGE_API_ENDPOINT")
)
exported = []
downloaded = []
for blob in storage_client.list_blobs(bucket, prefix=prefix):
    exported.append(blob.name)
    text = blob.download_as_bytes().decode("utf-8")
    downloaded.extend(
        {"region": r["region"], "orders": int(r["orders"])} for r in csv.DictReader(io.StringIO(text))
    )
assert exported, f"the export wrote nothing under gs://{bucket}/{prefix}"

print(
    json.dumps(
        {
            "project": client.project,
            "rows": rows,
            "bytes_processed": job.total_bytes_processed,
            "exported": exported,
            "downloaded_rows": downloaded,
        }
    )
)
