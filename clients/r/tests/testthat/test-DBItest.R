# DBI's own compliance suite, for the parts that apply to a read-only backend. Every skip, with its reason:
read_only <- c(  # the gateway runs read-only queries: each of these creates, writes or drops a table, or
                 # reads one it made (statements are refused: "CREATE statements are not allowed")
  "append_roundtrip_64_bit_character", "append_roundtrip_64_bit_numeric", "append_roundtrip_64_bit_roundtrip",
  "append_roundtrip_character", "append_roundtrip_character_empty", "append_roundtrip_character_empty_after",
  "append_roundtrip_character_native", "append_roundtrip_date", "append_roundtrip_date_extended",
  "append_roundtrip_factor", "append_roundtrip_integer", "append_roundtrip_keywords",
  "append_roundtrip_logical", "append_roundtrip_mixed", "append_roundtrip_null", "append_roundtrip_numeric",
  "append_roundtrip_quotes", "append_roundtrip_quotes_column_names", "append_roundtrip_quotes_table_names",
  "append_roundtrip_time", "append_roundtrip_timestamp", "append_roundtrip_timestamp_extended",
  "append_table", "append_table_append_incompatible", "append_table_invalid_value", "append_table_name",
  "append_table_new", "append_table_return", "append_table_row_names_false", "append_table_row_names_ignore",
  "append_table_row_names_non_null", "append_table_value_df", "append_table_value_shuffle",
  "append_table_value_shuffle_subset", "append_table_value_subset", "cannot_clear_result_twice_statement",
  "clear_result_return_statement", "create_roundtrip_keywords", "create_roundtrip_quotes",
  "create_table_name", "create_table_overwrite", "create_table_return", "create_table_row_names_default",
  "create_table_row_names_null", "create_table_visible_in_other_connection", "data_type_create_table",
  "execute_atomic", "execute_immediate", "exists_table", "exists_table_error", "exists_table_list",
  "exists_table_name", "fetch_no_return_value", "list_fields", "list_fields_object", "list_fields_quoted",
  "list_fields_row_names", "list_objects", "list_objects_quote", "list_tables", "list_tables_quote",
  "overwrite_table", "overwrite_table_missing", "read_table", "read_table_check_names",
  "read_table_check_names_false", "read_table_closed_connection", "read_table_empty", "read_table_error",
  "read_table_invalid_connection", "read_table_name", "read_table_row_names_default",
  "read_table_row_names_false", "read_table_row_names_na_exists", "read_table_row_names_na_missing",
  "read_table_row_names_string_exists", "read_table_row_names_string_missing",
  "read_table_row_names_true_exists", "read_table_row_names_true_missing", "remove_table_closed_connection",
  "remove_table_error", "remove_table_invalid_connection", "remove_table_list",
  "remove_table_missing_succeed", "remove_table_name", "remove_table_other_con", "remove_table_return",
  "roundtrip_64_bit_character", "roundtrip_64_bit_numeric", "roundtrip_64_bit_roundtrip",
  "roundtrip_character", "roundtrip_character_empty", "roundtrip_character_empty_after",
  "roundtrip_character_native", "roundtrip_date", "roundtrip_date_extended", "roundtrip_factor",
  "roundtrip_field_types", "roundtrip_integer", "roundtrip_keywords", "roundtrip_logical", "roundtrip_mixed",
  "roundtrip_null", "roundtrip_numeric", "roundtrip_quotes", "roundtrip_quotes_table_names", "roundtrip_time",
  "roundtrip_timestamp", "roundtrip_timestamp_extended", "send_statement_immediate",
  "send_statement_only_one_result_set", "send_statement_result_valid", "send_statement_trivial",
  "table_visible_in_other_connection", "write_table_append_incompatible", "write_table_error",
  "write_table_name", "write_table_overwrite", "write_table_return", "write_table_row_names_default",
  "write_table_row_names_false", "write_table_row_names_na_exists", "write_table_row_names_na_missing",
  "write_table_row_names_string_exists", "write_table_row_names_string_missing",
  "write_table_row_names_true_exists", "write_table_row_names_true_missing", "write_table_value_df",
  "write_table_value_shuffle", "write_table_value_shuffle_subset", "write_table_value_subset"
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
    tweaks = DBItest::tweaks(omit_blob_tests = TRUE, temporary_tables = FALSE, list_temporary_tables = FALSE,
                             # DuckDB's UNION removes duplicates by hashing, in any order, and the tests expect
                             # order: UNION ALL
                             union = function(queries) paste(queries, collapse = " UNION ALL ")),
    name = "saferoom"
  )
  DBItest::test_getting_started(skip = skipped)
  DBItest::test_driver(skip = skipped)
  DBItest::test_connection(skip = skipped)
  DBItest::test_result(skip = skipped)
  DBItest::test_sql(skip = skipped)
}
