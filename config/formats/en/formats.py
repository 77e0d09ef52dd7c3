# To the second, with the zone's abbreviation (TIME_ZONE is UTC): see config/formats/__init__.py.
DATETIME_FORMAT = "Y-m-d H:i:s T"
