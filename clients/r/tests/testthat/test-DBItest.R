# DBI's own compliance suite, for the parts that apply to a read-only backend. Every skip, with its reason:
read_only <- c(  # the gateway runs read-only queries: these create, write or drop tables first
  "send_statement.*", "execute_.*", "fetch_no_return_value", "clear_result_return_statement",
  "cannot_clear_result_twice_statement", "data_type_create_table", "create_.*", "append_.*", "write_table.*",
  "overwrite_table.*", "roundtrip_.*", "remove_table.*", "table_visible_in_other_connection.*", "read_table.*",
  "list_tables.*", "exists_table.*", "list_objects.*", "list_fields.*"
)
skipped <- c(
  read_only,
  "package_name",       # the package is saferoom, named as the Python package is, not R<name>
  "connect_bigint_.*",  # BIGINT is always a double (exact to 2^53); there is no bigint = argument
  "data_64_bit_numeric_warning", "data_64_bit_lossless",  # past 2^53 a BIGINT loses digits, with no warning
  "data_date", "data_date_typed", "data_time", "data_timestamp", "data_timestamp_typed"  # date(), time(),
                        # timestamp() are not on the guard's function allowlist; CAST and typed literals are
)
if (nzchar(Sys.getenv("SAFEROOM_TEST_URL")) && requireNamespace("DBItest", quietly = TRUE)) {
  DBItest::make_context(
    saferoom(),
    list(url = Sys.getenv("SAFEROOM_TEST_URL"), token = Sys.getenv("SAFEROOM_TEST_TOKEN")),
    tweaks = DBItest::tweaks(omit_blob_tests = TRUE, temporary_tables = FALSE, list_temporary_tables = FALSE),
    name = "saferoom"
  )
  DBItest::test_getting_started(skip = skipped)
  DBItest::test_driver(skip = skipped)
  DBItest::test_connection(skip = skipped)
  DBItest::test_result(skip = skipped)
  DBItest::test_sql(skip = skipped)
}
