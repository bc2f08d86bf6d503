"""Bucket origin: directories served as S3 buckets (website endpoint and S3 REST API)."""
