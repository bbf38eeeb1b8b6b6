# Requests to the gateway, and its errors as R conditions.

sr_handle <- function(state, method, body) {
  # a result arrives in 1 MiB reads, not curl's 16 KiB: far fewer calls into R for a large body
  handle <- curl::new_handle(buffersize = 1048576)
  curl::handle_setheaders(handle, Authorization = paste("Bearer", state$token),
                          Accept = "application/json", `Content-Type` = "application/json")
  if (!is.null(body)) {
    curl::handle_setopt(handle, copypostfields = as.character(jsonlite::toJSON(body, auto_unbox = TRUE)))
  } else if (method != "GET") {
    curl::handle_setopt(handle, customrequest = method)
  }
  handle
}

sr_url <- function(state, path, query = NULL) {
  url <- paste0(state$url, path)
  if (!length(query)) return(url)
  paste0(url, "?", paste(names(query), vapply(query, curl::curl_escape, ""), sep = "=", collapse = "&"))
}

sr_unreachable <- function(state) {
  function(e) {
    sr_stop(list(type = "ConnectionError",
                 message = paste0("cannot reach the gateway at ", state$url, ": ", conditionMessage(e))))
  }
}

# A JSON call: the answer parsed, or the gateway's error signalled.
sr_request <- function(state, method, path, body = NULL, query = NULL) {
  force(state)  # a closed connection's error is its own, not "cannot reach"
  handle <- sr_handle(state, method, body)
  response <- tryCatch(curl::curl_fetch_memory(sr_url(state, path, query), handle = handle),
                       error = sr_unreachable(state))
  if (response$status_code >= 400) sr_stop(sr_error_of(sr_text(response$content), response$status_code), response$status_code)
  sr_json(response$content)
}

# A query, its `vectors` body read frame by frame as it arrives (see sr_frames).
sr_query <- function(state, body) {
  force(state)
  frames <- sr_frames()
  response <- tryCatch(curl::curl_fetch_stream(sr_url(state, "/v1/query"), frames$take,
                                               handle = sr_handle(state, "POST", body)),
                       error = sr_unreachable(state))
  if (response$status_code >= 400) sr_stop(sr_error_of(sr_text(frames$rest()), response$status_code), response$status_code)
  frames$result()
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
