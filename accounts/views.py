"""Sign-in and sign-out pages. The rules are in accounts.services; these only speak HTTP."""

from __future__ import annotations

import math
import secrets

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login, logout
from django.contrib.auth.mixins import LoginRequiredMixin
from django.shortcuts import redirect, render
from django.utils.decorators import method_decorator
from django.views import View
from django.views.decorators.cache import never_cache

from .forms import SignInCodeForm, SignInForm
from .http import client_ip, safe_next_url
from .services import (
    CodeLocked,
    RateLimited,
    SignInReplaced,
    SignInUnavailable,
    sessions_revoke_all,
    sign_in_code_redeem,
    sign_in_link_inspect,
    sign_in_link_redeem,
    sign_in_request,
)

# The address a code is expected for, and a random marker of the browser that asked for a link:
# opening the link in that same browser signs in at once, anywhere else asks for a click first.
SESSION_EMAIL = "sign_in_email"
SESSION_BROWSER = "sign_in_browser"
SIGN_IN_BACKEND = "django.contrib.auth.backends.ModelBackend"
# The cache (Redis) holding links, codes and rate-limit counters is down: 503, never a sign-in without limits.
UNAVAILABLE_MESSAGE = "Sign-in is temporarily unavailable, try again in a minute."
UNAVAILABLE_RETRY_AFTER = "60"
# A right code sent before the account's latest sign-in or sign-out everywhere (see SignInReplaced).
CODE_REPLACED_MESSAGE = (
    "This code was replaced by a later sign-in or sign-out, so it no longer works. Send a new email to sign in again."
)
# Signing out also empties what this site left in the browser: cached pages, and the storage where
# htmx keeps snapshots of the pages it navigated (the events list). Not its cookies: the admin's
# known-browser cookie must outlive a sign-out.
CLEAR_SITE_DATA_ON_SIGN_OUT = '"cache", "storage"'


def _browser_nonce(request) -> str:
    """This browser's marker: the one it was given with an earlier link, or a new one (stored with the
    sign-in's address once the request is accepted, not before: see SignInView.post)."""
    return request.session.get(SESSION_BROWSER) or secrets.token_urlsafe(16)


def _unavailable_response(response):
    response["Retry-After"] = UNAVAILABLE_RETRY_AFTER
    return response


def _complete_sign_in(request, result):
    # login() rotates the session key, so a session id planted before sign-in is worth nothing after it.
    login(request, result.user, backend=SIGN_IN_BACKEND)
    request.session.pop(SESSION_EMAIL, None)
    return redirect(safe_next_url(request, result.next_url))


class SignInView(View):
    template_name = "accounts/sign_in.html"

    def get(self, request):
        form = SignInForm(initial={"next": request.GET.get("next", "")})
        return render(request, self.template_name, {"form": form})

    def post(self, request):
        form = SignInForm(request.POST)
        if not form.is_valid():
            return render(request, self.template_name, {"form": form}, status=400)
        browser_nonce = _browser_nonce(request)
        try:
            email = sign_in_request(
                email=form.cleaned_data["email"],
                next_url=safe_next_url(request, form.cleaned_data["next"]),
                browser_nonce=browser_nonce,
                ip_address=client_ip(request),
            )
        except RateLimited:
            form.add_error(None, "Too many sign-in requests. Wait a few minutes, then try again.")
            return render(request, self.template_name, {"form": form}, status=429)
        except SignInUnavailable:
            form.add_error(None, UNAVAILABLE_MESSAGE)
            return _unavailable_response(render(request, self.template_name, {"form": form}, status=503))
        # Written only now: a refused request stores no session, so that a client past its limits
        # cannot go on adding a database row, kept two weeks, with every request it sends.
        request.session[SESSION_BROWSER] = browser_nonce
        request.session[SESSION_EMAIL] = email
        return redirect("accounts:sign_in_code")


# Pages naming the address signing in, or whose URL holds a live sign-in token: never stored.
@method_decorator(never_cache, name="dispatch")
class SignInCodeView(View):
    template_name = "accounts/sign_in_code.html"

    def render_page(self, request, form, email, status=200):
        context = {
            "form": form,
            "email": email,
            "code_minutes": settings.SIGN_IN_CODE_TTL_SECONDS // 60,
            "link_minutes": settings.SIGN_IN_LINK_TTL_SECONDS // 60,
        }
        return render(request, self.template_name, context, status=status)

    def get(self, request):
        email = request.session.get(SESSION_EMAIL)
        if not email:
            return redirect("accounts:sign_in")
        return self.render_page(request, SignInCodeForm(), email)

    def post(self, request):
        email = request.session.get(SESSION_EMAIL)
        if not email:
            return redirect("accounts:sign_in")
        form = SignInCodeForm(request.POST)
        status = 400
        if form.is_valid():
            try:
                result = sign_in_code_redeem(email=email, code=form.cleaned_data["code"], ip_address=client_ip(request))
            except RateLimited:
                form.add_error(None, "Too many tries from your network. Wait a few minutes, then try again.")
                status = 429
            except SignInUnavailable:
                form.add_error(None, UNAVAILABLE_MESSAGE)
                return _unavailable_response(self.render_page(request, form, email, status=503))
            except SignInReplaced:
                form.add_error(None, CODE_REPLACED_MESSAGE)
            except CodeLocked as locked:
                # The lock ends with its window whatever is tried meanwhile: say when, rounded up.
                minutes = max(1, math.ceil(locked.seconds_left / 60))
                form.add_error(
                    None,
                    f"Too many wrong codes: codes for this address are refused for the next {minutes} "
                    f"minute{'s' if minutes != 1 else ''}. The sign-in link in your newest email still works.",
                )
                status = 429
            else:
                if result is not None:
                    return _complete_sign_in(request, result)
                form.add_error("code", "That code is not right, or it has expired.")
        return self.render_page(request, form, email, status=status)


@method_decorator(never_cache, name="dispatch")
class SignInLinkView(View):
    """GET signs in only in the browser that asked; elsewhere it shows a button, since mail scanners open links."""

    def get(self, request, token: str):
        try:
            pending = sign_in_link_inspect(token=token, browser_nonce=request.session.get(SESSION_BROWSER))
        except SignInUnavailable:
            return self._temporarily_unavailable(request)
        except SignInReplaced:
            return self._unavailable(request, replaced=True)
        if pending is None:
            return self._unavailable(request)
        if pending.same_browser:
            return self._redeem(request, token)
        return render(request, "accounts/sign_in_confirm.html", {"email": pending.email})

    def post(self, request, token: str):
        return self._redeem(request, token)

    def _redeem(self, request, token: str):
        try:
            result = sign_in_link_redeem(token=token)
        except SignInUnavailable:
            return self._temporarily_unavailable(request)
        except SignInReplaced:
            return self._unavailable(request, replaced=True)
        if result is None:
            return self._unavailable(request)
        return _complete_sign_in(request, result)

    def _unavailable(self, request, replaced=False):
        return render(request, "accounts/sign_in_link_unavailable.html", {"replaced": replaced}, status=400)

    def _temporarily_unavailable(self, request):
        page = render(
            request, "accounts/sign_in_temporarily_unavailable.html", {"message": UNAVAILABLE_MESSAGE}, status=503
        )
        return _unavailable_response(page)


class SignOutView(LoginRequiredMixin, View):
    def get(self, request):
        return render(request, "accounts/sign_out.html")

    def post(self, request):
        logout(request)
        messages.success(request, "You are signed out.")
        return _signed_out(redirect("accounts:sign_in"))


class SignOutEverywhereView(LoginRequiredMixin, View):
    def post(self, request):
        sessions_revoke_all(user=request.user, request=request)
        logout(request)
        messages.success(request, "You are signed out on every device and browser.")
        return _signed_out(redirect("accounts:sign_in"))


def _signed_out(response):
    response["Clear-Site-Data"] = CLEAR_SITE_DATA_ON_SIGN_OUT
    return response
