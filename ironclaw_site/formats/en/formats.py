"""One date format everywhere in the admin (lists, pages, filters), sortable and unambiguous;
the locale's own ("Nov. 29, 2026, 3:45 a.m.") differs between fields and wraps in lists."""

DATETIME_FORMAT = "Y-m-d H:i:s"
SHORT_DATETIME_FORMAT = "Y-m-d H:i"
DATE_FORMAT = "Y-m-d"
SHORT_DATE_FORMAT = "Y-m-d"
TIME_FORMAT = "H:i:s"
