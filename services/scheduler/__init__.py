"""Screening campaigns: a durable scheduler, Parquet results, the gRPC servicer.

``Scheduler`` (in-process core), ``Store`` (SQLite or PostgreSQL), executors (how a
work unit is computed), ``actor`` (the Ray actor around the core) and ``servicer``
(the CampaignService the gateway registers).
"""
