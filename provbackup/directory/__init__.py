"""Everything LDAP: nothing outside this package imports ldap3."""
