"""The wire contract shared by every part of the system.

MQTT topics and payload models (:mod:`contract.topics`, :mod:`contract.messages`), the typed
device events that drivers emit and rules consume (:mod:`contract.events`), alert episodes
(:mod:`contract.alerts`) and the site model / rule configuration that the fleet manager pushes
and the replay tool reads (:mod:`contract.site`). Imports pydantic only.
"""

SCHEMA_VERSION = 1
