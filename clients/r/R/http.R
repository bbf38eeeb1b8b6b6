# Requests to the gateway, and its errors as R conditions.

sr_request <- function(state, method, path, body = NULL, query = NULL, raw = FALSE) {
  handle <- curl::new_handle()
  curl::handle_setheaders(handle, Authorization = paste("Bearer", state$token),
                          Accept = "application/json", `Content-Type` = "application/json")
  if (!is.null(body)) {
    curl::handle_setopt(handle, copypostfields = as.character(jsonlite::toJSON(body, auto_unbox = TRUE)))
  } else if (method != "GET") {
    curl::handle_setopt(handle, customrequest = method)
  }
  url <- paste0(state$url, path)
  if (length(query)) {
    url <- paste0(url, "?", paste(names(query), vapply(query, curl::curl_escape, ""), sep = "=", collapse = "&"))
  }
  response <- tryCatch(
    curl::curl_fetch_memory(url, handle = handle),
    error = function(e) sr_stop(list(type = "ConnectionError",
                                     message = paste0("cannot reach the gateway at ", state$url, ": ", conditionMessage(e))))
  )
  if (response$status_code >= 400) sr_stop(sr_error_of(sr_text(response$content), response$status_code), response$status_code)
  if (raw) return(response$content)
  sr_json(response$content)
}

sr_text <- function(bytes) {
  text <- rawToChar(bytes)
  Encoding(text) <- "UTF-8"
  text
}

sr_json <- function(bytes) {
  jsonlite::fromJSON(sr_text(bytes), simplifyVector = TRUE, simplifyDataFrame = FALSE, simplifyMatrix = FALSE)
}

sr_error_of <- function(text, status) {
  parsed <- tryCatch(jsonlite::fromJSON(text, simplifyVector = TRUE)$error, error = function(e) NULL)
  if (is.list(parsed) && !is.null(parsed$message)) return(parsed)
  list(type = "GatewayError", message = sprintf("the gateway answered HTTP %d: %s", status, substr(text, 1, 300)))
}

# The gateway's error {type, message, ...fields} as a condition: QueryRejected is `saferoom_rejected`,
# AuthError `saferoom_auth_error`; every one is a `saferoom_error` with the type's name as a class too.
sr_stop <- function(error, status = NA_integer_) {
  special <- switch(error$type, QueryRejected = "saferoom_rejected", AuthError = "saferoom_auth_error", NULL)
  classes <- unique(c(special, paste0("saferoom_", error$type), "saferoom_error", "error", "condition"))
  condition <- structure(
    class = classes,
    list(message = error$message, call = NULL, type = error$type, explanation = error$message,
         column = error$column, tag = error$tag, threats = as.character(unlist(error$threats)),
         roles = as.character(unlist(error$allowed_roles)), status = status)
  )
  stop(condition)
}
