"""imsaka.hss: the Home Subscriber Server (TS 23.228 §5.2.1; Cx per TS 29.228 / TS 29.229).

- `imsaka.hss.store.HssStore`: subscriber data on SQLite or PostgreSQL (SQLAlchemy 2
  async, Alembic migrations), SQN_HE advanced atomically (TS 33.102 Annex C).
- `imsaka.hss.service.CxService`: UAR, MAR, SAR, LIR answers; RTR and PPR builders.
- `imsaka.hss.server.HssServer` / `run(config)`: the Diameter server and the REST
  provisioning API (`imsaka.hss.api`) from the ``[hss]`` section (`imsaka.hss.config`).
- `imsaka.hss.cli`: ``imsaka hss add-subscriber|import|show|delete|deregister``.
"""
