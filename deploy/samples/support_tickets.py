"""Writes the demo's sample tables: support tickets routed to queue codes.

    .venv/bin/python deploy/samples/support_tickets.py     # rewrites both CSVs beside this file

`support_tickets.csv` (ticket_id, prompt, completion) is the training table: hand-written
templates filled with varied slots, then given the noise real tickets carry (greetings, sign-offs,
typos, lower case, missing punctuation). `held_out_tickets.csv` (ticket_id, prompt, label) holds
tickets written separately, never from a training template, so an evaluation on them measures
whether the model learnt the queues rather than the sentences. The output is fixed by SEED; the
CSVs are committed so the demo needs no generation step.
"""

from __future__ import annotations

import csv
import random
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
TRAINING_FILE = HERE / "support_tickets.csv"
HELD_OUT_FILE = HERE / "held_out_tickets.csv"
SEED = 11
# Rows per queue in the training table. Nine queues stay under 320 rows, where the automatic
# schedule doubles the batch size (services/control/domain/options.py): the demo's training
# time then stays a few minutes on a 2-core CPU.
TRAINING_PER_QUEUE = 35

QUEUES = {
    "BLX-207": "billing",
    "KRT-118": "account access",
    "SHP-552": "shipping",
    "RTN-330": "returns and exchanges",
    "CNL-476": "cancellations",
    "APP-941": "app and website bugs",
    "PRV-064": "privacy and personal data",
    "SLS-719": "sales",
    "FRD-825": "fraud and security",
}

SLOTS = {
    "product": ["the running shoes", "a coffee grinder", "the standing desk", "two phone cases",
                "the winter jacket", "my new headphones", "the kids' bike", "a laptop stand",
                "the garden hose", "a yoga mat", "the blender", "the wool sweater",
                "a set of pans", "the desk lamp", "the hiking boots"],
    "order": ["#48213", "#50917", "#39002", "A-77120", "#61458", "#20735", "B-11893", "#73360"],
    "days": ["two weeks", "ten days", "a month", "three weeks", "nine days", "over a week",
             "5 days"],
    "when": ["this month", "yesterday", "last week", "on Monday", "in March", "again today"],
    "plan": ["subscription", "Pro plan", "annual plan", "Family plan", "premium membership",
             "monthly plan"],
    "amount": ["$49.99", "€19", "£120", "$7.50", "$230", "€64.90", "£12"],
    "device": ["iPhone", "Pixel 7", "Samsung tablet", "Android phone", "iPad", "Mac",
               "Windows laptop"],
    "browser": ["Chrome", "Firefox", "Safari", "Edge"],
    "version": ["4.2", "5.0.1", "3.9", "the latest version"],
    "country": ["Canada", "Germany", "Brazil", "Japan", "Australia", "Poland", "Mexico"],
    "courier": ["UPS", "DHL", "FedEx", "the courier", "the post office", "the driver"],
    "team": ["20", "fifty", "120", "35", "300", "12"],
    "month": ["January", "last month", "April", "this quarter", "October"],
}

# Training templates per queue. The first rows are the original hand-written sample tickets.
TEMPLATES = {
    "BLX-207": [
        "I was charged twice for my subscription this month",
        "Why is there an extra fee on my invoice?",
        "Please refund the payment you took yesterday",
        "My bill is higher than the price I signed up for",
        "The invoice shows a charge I don't recognise",
        "I was charged twice for my {plan} {when}",
        "Why is there an extra {amount} fee on my invoice for {month}?",
        "You billed me {amount} after I switched to the cheaper plan",
        "How do I update the credit card you charge every month?",
        "My payment failed but the money still left my bank account",
        "Can you send a corrected invoice with our company VAT number on it?",
        "The promo code was accepted at checkout but I paid full price",
        "I see two identical charges of {amount} on my card statement",
        "Where can I download the past invoices for my {plan}?",
        "You charged sales tax twice on order {order}",
        "My card got declined at checkout even though there is money on it",
        "I'm still being charged {amount} for an add-on I removed {when}",
        "The price of my {plan} went up without any notice",
        "Please refund the {amount} you took {when}, it was charged in error",
        "I was overcharged for order {order}, the total should be lower",
        "Can I get a receipt for the {amount} payment I made {when}?",
        "My direct debit was taken on the wrong date {when}",
        "Why was I charged {amount} when the website said it was free?",
        "I need to switch the payment method on my {plan} to PayPal",
        "There's a late payment fee on my account but I paid on time",
    ],
    "KRT-118": [
        "I can't log in, it says my password is wrong",
        "The password reset email never arrives",
        "My account got locked after too many attempts",
        "Two-factor codes are not accepted when I sign in",
        "How do I change the email I use to log in?",
        "I forgot my username and the email address I signed up with",
        "I changed phones and no longer get my two-factor codes",
        "The reset link says it has expired every time I click it",
        "I never received the verification email for my new account",
        "How do I sign in with Google instead of a password?",
        "My account was locked after I typed the wrong password a few times on my {device}",
        "The security questions I set up are not being accepted",
        "I can't sign in on my {device}, it just says invalid credentials",
        "Face ID login on my {device} stopped working, how do I get back in?",
        "I don't have access to my old email anymore so I can't reset my password",
        "Every time I log in it asks me to verify my identity again",
        "My username isn't recognised on the sign-in page",
        "The captcha on the login page never lets me through",
        "I set a new password but the site still won't let me in",
        "Please help me get back into my account, I'm locked out",
        "Login fails on my {device} with an 'account not found' message",
    ],
    "SHP-552": [
        "My package has not arrived after two weeks",
        "The tracking number shows no updates",
        "The parcel was delivered to the wrong address",
        "Can I change the delivery address of my order?",
        "The courier left my box in the rain and it is damaged",
        "My package has not arrived after {days}",
        "Order {order} still says label created after {days}",
        "The tracking page for order {order} hasn't changed in {days}",
        "{courier} says my parcel was delivered but there is nothing at my door",
        "Can you ship {product} to my work address instead of home?",
        "Only half of order {order} arrived, where is the rest of it?",
        "My parcel is stuck in customs in {country}, what do I need to do?",
        "How long does delivery to {country} usually take?",
        "The box with {product} arrived completely crushed by {courier}",
        "Is it possible to upgrade order {order} to express delivery?",
        "The driver never rang the bell and now my parcel is back at the depot",
        "I was given a tracking number for order {order} that doesn't exist",
        "Order {order} was sent to my old address, can it be redirected?",
        "When will order {order} be delivered?",
        "The estimated delivery date for my parcel has passed",
        "Can you tell {courier} to leave the parcel with a neighbour?",
        "Order {order} shows as delivered to a different city",
        "Do you deliver on weekends to {country}?",
        "I'm away next week, can you delay the shipping of order {order}?",
    ],
    "RTN-330": [
        "How do I return a pair of shoes that don't fit?",
        "I want to send back the jacket I ordered",
        "Where do I print the return label?",
        "The item I received is broken, I want to exchange it",
        "How long do I have to return a product?",
        "How do I return {product} from order {order}?",
        "I want to send back {product}, it's not what I expected",
        "Where do I get the return label for order {order}?",
        "{product} arrived with a crack and I would like an exchange",
        "Is it too late to return {product} I bought {days} ago?",
        "I sent back {product} {days} ago and I'm still waiting for my refund",
        "Can I exchange {product} for a bigger size?",
        "You sent me the wrong colour of {product}, how do I swap it?",
        "Do I have to pay for the return shipping myself?",
        "The drop-off point refused to take my return parcel",
        "I threw away the packing slip, can I still return {product}?",
        "Can I return a gift I received without the receipt?",
        "I'd like a refund for {product}, it's not as described",
        "What's your return policy on sale items?",
        "Has my return for order {order} been received yet?",
        "The zip on {product} broke after one use, can I send it back?",
        "I want to swap {product} for a different model",
    ],
    "CNL-476": [
        "Please cancel my {plan} before it renews",
        "I ordered {product} by mistake, can you cancel order {order}?",
        "How do I turn off automatic renewal?",
        "Cancel order {order} please, I found it cheaper somewhere else",
        "I want to end my {plan} at the end of this billing period",
        "Can order {order} still be cancelled or has it already shipped?",
        "I started the free trial and want to cancel before I get charged",
        "Please stop my {plan}, I'm moving to {country}",
        "Can I pause my {plan} for two months instead of cancelling it?",
        "I placed the same order twice by accident, please cancel one of them",
        "I no longer need {product}, please cancel it before it ships",
        "How do I cancel my {plan}? I can't find the option anywhere",
        "Don't renew my {plan} next month, I'm done with it",
        "I want to cancel everything and stop all future orders",
        "Is there a fee if I cancel my {plan} early?",
        "Please cancel order {order}, I don't need it anymore",
        "How do I unsubscribe from the {plan} itself, not just the emails?",
        "I want to close my {plan} and not be charged again",
        "Please cancel my upcoming delivery box",
        "Terminate my membership effective immediately",
    ],
    "APP-941": [
        "The mobile app crashes when I open it",
        "The app is stuck on the loading screen",
        "Push notifications stopped working on my phone",
        "The app logs me out every few minutes",
        "I can't upload a photo in the app",
        "The app freezes when I tap the checkout button on my {device}",
        "The website shows error 500 when I open my order history",
        "Search returns nothing, even for products I know you sell",
        "Product pictures don't load on {browser}",
        "Since the update to {version} the app drains my battery",
        "After updating to {version} the app won't start on my {device}",
        "The page keeps reloading when I try to add items to my basket",
        "I get a blank white screen after logging in on {browser}",
        "The barcode scanner in the app does not recognise anything",
        "The app crashes on my {device} every time I open the orders tab",
        "Buttons on the website overlap and I can't press continue on {browser}",
        "The app shows prices in the wrong currency after the update",
        "The app won't let me type in the address field",
        "Your website is very slow and times out on {browser}",
        "The app keeps showing an old version of my cart",
        "Paying in the app makes it crash on my {device}",
        "I get 'something went wrong' whenever I open settings in the app",
        "The screen flickers when I scroll through products on my {device}",
    ],
    "PRV-064": [
        "Please delete all the personal data you hold about me",
        "I want a copy of the data you store on me",
        "Stop sending my details to advertisers",
        "Who can see my address and phone number?",
        "I want to close my account and erase my history",
        "Please unsubscribe me from all marketing emails and texts",
        "What do you do with the location data the app collects?",
        "I want to withdraw my consent for personalised ads",
        "Under GDPR I am requesting all the information you have on me",
        "How long do you keep my order history and payment details?",
        "Please stop sharing my purchase history with your partners",
        "Can you remove my phone number from your records completely?",
        "Which cookies does your website set and can I refuse them?",
        "I never agreed to you recording my support calls",
        "Do you sell customer data to third parties?",
        "Delete my account and every piece of data linked to it",
        "Please forget my data, I don't want to be a customer anymore",
        "Why are you asking for my date of birth?",
        "Can I see which companies you shared my email address with?",
        "Please correct the personal details you hold, my name is misspelled",
        "Does the app record where I am in the background?",
    ],
    "SLS-719": [
        "Do you offer a discount for teams of fifty people?",
        "I would like a quote for an enterprise plan",
        "Can we get invoiced annually instead of monthly?",
        "Is there a nonprofit price for your product?",
        "I want to talk to someone about a bulk purchase",
        "We are a school with {team} staff, do you have education pricing?",
        "Could someone show our team a demo of the business plan?",
        "What would {team} licences cost per year?",
        "Do you give volume discounts on orders of more than {team} units?",
        "I'd like to become a reseller of your products in {country}",
        "Is there a trial of the enterprise plan for our team of {team}?",
        "Our company of {team} people wants to move over from a competitor",
        "Could you send a formal quote for {team} standing desks for our office?",
        "Who do I talk to about a partnership with your company?",
        "Do you have special pricing for startups?",
        "We need a custom contract for {team} seats, who can help?",
        "Can I get a price for {team} units delivered every month?",
        "What's included in the enterprise plan compared to Pro?",
        "We're interested in a pilot for our department",
        "Do you have an account manager for large customers?",
        "Is there a discount if we pay for three years upfront?",
        "Please get your sales team to call me about business accounts",
    ],
    "FRD-825": [
        "Someone used my card to place an order I didn't make",
        "I got an email asking for my password that looks fake",
        "There are orders in my account from another country",
        "A stranger changed the shipping address on my account",
        "I think my account was hacked",
        "I got a text saying my account is suspended, with a strange link",
        "There's a login from {country} on my account that wasn't me",
        "Someone placed order {order} with my saved card, I never bought {product}",
        "A caller claiming to be your support team asked for my card PIN",
        "The email on my account was changed without my permission",
        "My gift card balance disappeared and I didn't spend it",
        "I received a parcel I never ordered and my card was charged for it",
        "My password was changed yesterday and it wasn't me",
        "Is this email about a refund of {amount} really from you? It looks like a scam",
        "Someone is using my account to send messages to other customers",
        "There's a purchase of {amount} on my card that I didn't authorise",
        "I clicked a link in a fake email and typed in my password",
        "My account sent an order to {country} that I know nothing about",
        "Someone pretending to be your company on social media is asking for card numbers",
    ],
}

# Held-out tickets: written on their own, in other words than any training template.
HELD_OUT = {
    "BLX-207": [
        "The amount taken from my account doesn't match what the receipt says",
        "got billed for december even though i had already paid in advance",
        "Could someone explain the surcharge that appeared on my latest statement?",
        "I paid by bank transfer but my account still says the invoice is overdue",
        "The loyalty discount wasnt applied to this month's bill",
        "Hi, please change the billing address on our invoices to the new office. Thanks",
        "Two payments went out for one purchase, please reverse the duplicate",
        "Why did my monthly fee go from 9 to 15 dollars?",
    ],
    "KRT-118": [
        "Locked out of my profile, the site won't accept my details anymore",
        "I reset my password three times and it still says incorrect",
        "hello, the authenticator app codes are always rejected. how can i get in?",
        "No sign-in code arrives by SMS when I try to log on",
        "My login email has a typo, how can I correct it so I can get in?",
        "It keeps telling me my account doesn't exist but I've used it for years",
        "Can you unlock my account? I was blocked after guessing the password",
        "The 'forgot password' button does nothing and I can't access my profile",
    ],
    "SHP-552": [
        "My order never showed up and tracking is empty",
        "Hi, the delivery date keeps moving and the parcel is nowhere to be seen",
        "where is my stuff?? ordered it ages ago and still no sign of it",
        "Tracking says out for delivery since Friday, nothing has come",
        "The neighbour got my parcel instead of me, what now?",
        "Could you hold my package at the depot? I'm away until the 20th",
        "Shipment to Norway has been sitting at the border for days",
        "Good morning, my box turned up soaking wet and torn open",
    ],
    "RTN-330": [
        "The trousers are too small, what's the process to swap them for a larger pair?",
        "I'd like my money back for the lamp, it doesn't suit my room. How do I ship it back?",
        "Is there a free returns option for the dress I bought?",
        "The return window on my order, is it 30 or 14 days?",
        "got a faulty kettle, want to send it back for a new one",
        "I mailed the sweater back last month, has it reached your warehouse?",
        "The size chart was wrong, I need to exchange these boots",
        "Can I bring my online purchase back to a store instead of posting it?",
    ],
    "CNL-476": [
        "I don't want the membership to renew this year, please end it",
        "Please call off the order I made an hour ago, I changed my mind",
        "How can I quit my plan without paying for another month?",
        "stop my subscription pls, not using it anymore",
        "I'd like to terminate my contract when the current term ends",
        "Can I undo the purchase I just made? It hasn't been dispatched yet",
        "Hello, I want to end my trial today so I'm not billed",
        "Please make sure I'm not signed up for the next delivery, I'm cancelling",
    ],
    "APP-941": [
        "The checkout page just spins forever and never completes",
        "Hi team, the android app closes by itself as soon as I tap my profile",
        "Nothing happens when I press 'add to cart' on your site",
        "The app's map screen is completely black on my phone",
        "Since last night the website gives me an error when I open my wishlist",
        "The text in the app is cut off and I can't read the order details",
        "Notifications come through three times each, the app seems broken",
        "The filters on the product list reset whenever I scroll down",
    ],
    "PRV-064": [
        "I'd like you to erase everything you know about me, as the law allows",
        "Please send me an export of all my personal information",
        "I don't want my browsing tracked on your site, how do I opt out?",
        "Who exactly gets access to my home address when I order?",
        "Take me off your newsletter and every promotional list",
        "Are my details shared with any data brokers?",
        "Hello, I want my old addresses and payment cards wiped from my profile",
        "Why does the app need access to my contacts and microphone?",
    ],
    "SLS-719": [
        "We'd like pricing for 80 employees, can your sales team reach out?",
        "Do you do discounts for charities?",
        "Hi, I run a small agency and want to buy accounts for my whole staff",
        "Is there a wholesale price list for retailers?",
        "Could we schedule a call about rolling your product out at our university?",
        "What's the price difference between the business and enterprise tiers for 40 users?",
        "Our procurement team needs a quotation before Friday",
        "Looking to order 500 units for a corporate event, is there a better rate?",
    ],
    "FRD-825": [
        "Money was spent from my wallet on things I never bought",
        "I got a message pretending to be you, asking me to confirm my bank details",
        "Someone in another city logged into my account last night",
        "My saved address was replaced with one I've never seen",
        "There are purchases on my account I definitely did not make, help!",
        "Somebody is ordering with my points, I suspect my account is compromised",
        "Got a weird call from someone saying they're from your company and wanting my login",
        "An unknown device was added to my account without my knowledge",
    ],
}

GREETINGS = ["Hi,", "Hello,", "Hey,", "Hi there,", "Good morning,", "Dear support,",
             "Hello team,"]
SIGN_OFFS = ["Thanks.", "Thank you!", "Please help.", "Thanks in advance", "Regards, Sam",
             "This is urgent.", "Cheers", "Any help appreciated."]


def _typo(text: str, rng: random.Random) -> str:
    """Swaps two letters or drops one in one longer word, as a hurried typist would."""
    words = text.split(" ")
    candidates = [i for i, w in enumerate(words) if len(w) >= 5 and w.isalpha()]
    if not candidates:
        return text
    i = rng.choice(candidates)
    w = words[i]
    j = rng.randrange(1, len(w) - 2)
    words[i] = (w[:j] + w[j + 1] + w[j] + w[j + 2:]) if rng.random() < 0.6 else w[:j] + w[j + 1:]
    return " ".join(words)


def _lower_first(text: str) -> str:
    """'Hi, can I ...' after a greeting, but 'Hi, I want ...' keeps its capital I."""
    first = text.split(" ", 1)[0]
    if first == "I" or first.startswith("I'"):
        return text
    return text[0].lower() + text[1:]


def _noisy(text: str, rng: random.Random) -> str:
    """The same request as a customer might type it: greetings, sign-offs, typos, casing."""
    if rng.random() < 0.3:
        text = f"{rng.choice(GREETINGS)} {_lower_first(text)}"
    if rng.random() < 0.25:
        text = text.rstrip("?.!") + ("?" if text.endswith("?") else ".")
        text = f"{text} {rng.choice(SIGN_OFFS)}"
    if rng.random() < 0.25:
        text = _typo(text, rng)
    if rng.random() < 0.15:
        text = text.lower()
    if rng.random() < 0.15:
        text = text.rstrip("?.!")
    return text


def _key(text: str) -> str:
    """Two tickets that differ only in case or punctuation count as one."""
    return " ".join(re.findall(r"[a-z0-9']+", text.lower()))


def _fill(template: str, rng: random.Random) -> str:
    text = re.sub(r"\{(\w+)\}", lambda m: rng.choice(SLOTS[m.group(1)]), template)
    return text[0].upper() + text[1:]


def training_rows(rng: random.Random) -> list[tuple[str, str]]:
    """TRAINING_PER_QUEUE distinct (prompt, code) rows per queue: every template once, filled
    but clean, then noisy variants of randomly chosen ones."""
    rows = []
    for code, templates in TEMPLATES.items():
        prompts = [_fill(t, rng) for t in templates]
        seen = {_key(p) for p in prompts}
        while len(prompts) < TRAINING_PER_QUEUE:
            prompt = _noisy(_fill(rng.choice(templates), rng), rng)
            if _key(prompt) not in seen:
                seen.add(_key(prompt))
                prompts.append(prompt)
        rows += [(p, code) for p in prompts]
    rng.shuffle(rows)
    return rows


def write(training: Path = TRAINING_FILE, held_out: Path = HELD_OUT_FILE) -> None:
    rng = random.Random(SEED)
    with open(training, "w", newline="") as f:
        out = csv.writer(f, lineterminator="\n")
        out.writerow(["ticket_id", "prompt", "completion"])
        for i, (prompt, code) in enumerate(training_rows(rng)):
            out.writerow([1001 + i, prompt, code])
    rows = [(p, code) for code, prompts in HELD_OUT.items() for p in prompts]
    rng.shuffle(rows)
    with open(held_out, "w", newline="") as f:
        out = csv.writer(f, lineterminator="\n")
        out.writerow(["ticket_id", "prompt", "label"])
        for i, (prompt, code) in enumerate(rows):
            out.writerow([9001 + i, prompt, code])


if __name__ == "__main__":
    write()
